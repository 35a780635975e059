"""Evaluation, one concern a module.

- `predict`: the evaluation pass (any number of models over the same batches of a packed split),
  class mapping by character, split selection;
- `metrics`: top-k accuracy, calibration, confused pairs, per-class and per-writer accuracy;
- `report`: `evaluate` one model on a split, its report (JSON, Markdown, charts);
- `robustness`: the distortion suite;
- `costs`: parameters, FLOPs, file sizes, latency, throughput and peak memory;
- `compare`: one table of every run;
- `plots`: the PNG charts.

Models come from `kanjirec.loading`; evaluation runs them as `kanjirec.inference` prepares them.
"""
