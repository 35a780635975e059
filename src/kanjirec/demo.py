"""The main job: synthesise a small dataset, train every architecture briefly, compare them.

This is what the README's first command runs on a fresh machine. Every step is
an ordinary command of the toolkit (`data synth`, `train`, `compare`), called
in-process with small settings, so the demo doubles as an end-to-end check of
the whole pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path

from kanjirec.errors import KanjirecError

# Half-width versions of the default architectures (about a quarter of the FLOPs), so that all
# six train in the demo's budget on 2 CPU cores. The structure of each model is unchanged; the
# full-size defaults are what `kanjirec train` uses.
DEMO_CONFIGS: dict[str, dict] = {
    "cnn": dict(channels=(16, 32, 64, 128), head_hidden=256),
    "hybrid_cnn_rnn": dict(channels=(16, 32, 64, 128), global_dim=256, hidden_size=128, head_hidden=256),
    "radical_attn_rnn": dict(channels=(16, 32, 64), embed_dim=64, hidden_size=96),
    "radical_rnn": dict(channels=(16, 32, 64), embed_dim=64, hidden_size=96, detector_hidden=128),
    # A 16x16 grid (16 row steps of 16 cells x 4 statistics): the 8x8 grid's cells were too coarse to
    # carry to new writers (test 51.5% against 62.3%, docs/results/learning/).
    "basic_rnn": dict(grid=16, embed_dim=32, hidden_size=96),
    # Online: the stroke model reads the samples' pen trajectories (stored with the demo's data).
    "stroke_rnn": dict(extractor="pen", hidden_size=128, head_hidden=128),
}

# Training settings that differ by model. The pen model trains on fresh synthetic writers whose
# strokes come in a varied order within components for half the samples: trained on the stored
# trajectories in KanjiVG order only, it read 99% in that order but 44% with the strokes of each
# component reordered (docs/results/pen/).
DEMO_TRAINING: dict[str, dict] = {
    "stroke_rnn": dict(synth_per_epoch=3200, synth_font_fraction=0.0, pen_order_shuffle=0.5),
}


# What the shipped model is shown first: kanji of every complexity and kana, in styles no training
# data contains (the held-out brush-cursive hands and a held-out print family).
SHOWCASE = "日本語書道花学永愛飛あカ"


def shipped_model_reads(out: Path, chars: str = SHOWCASE, seed: int = 0) -> float:
    """Step 1: before anything trains, the model inside the package reads images made on the spot
    (saved as PNGs under ``out``, so they can be looked at); returns the share it reads right."""
    import numpy as np
    from PIL import Image

    from kanjirec.data.fonts import GlyphCache, held_out_faces
    from kanjirec.data.kanjivg import load_kanjivg
    from kanjirec.data.synth import StrokeBank, draw_writer_styles, font_images, stroke_images
    from kanjirec.recognizer import Recognizer

    rec = Recognizer.load(top_k=3)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kvg = load_kanjivg()
    bank = StrokeBank.build([kvg[c] for c in chars])
    written, _ = stroke_images(
        bank, np.arange(len(chars)), draw_writer_styles(rng, len(chars), "held_out"), rng
    )
    face = next(f for f in held_out_faces() if f.design_family == "BIZ UD Gothic")
    style = draw_writer_styles(rng, len(chars))
    style = {**style, "size": np.full(len(chars), 0.9), "mess": np.zeros(len(chars))}
    printed = font_images(GlyphCache(face, 128, smooth=True), list(chars), style, rng)
    print(
        f"[demo] the shipped model ({rec.path.name}) reads images made on the spot, in styles it never saw:"
    )
    right = 0
    for kind, images in (("brush-cursive hand", written), (f"{face.name} (held-out face)", printed)):
        line = []
        for char, image in zip(chars, images, strict=True):
            path = out / f"{kind.split()[0]}_{char}.png"
            Image.fromarray(255 - image).save(path)  # dark ink on white, as a person would write it
            top = rec(path)
            right += top[0][0] == char
            line.append(f"{char}->{top[0][0]}{'' if top[0][0] == char else '(x)'} {top[0][1]:.2f}")
        print(f"[demo]   {kind}: " + "  ".join(line))
    share = right / (2 * len(chars))
    print(f"[demo]   {right} of {2 * len(chars)} read right; images in {out}")
    return share


def run_demo(
    out: str | Path = "runs/demo",
    classes: int = 100,
    per_class: int = 40,
    epochs: int = 6,
    models: list[str] | None = None,
    seed: int = 0,
    workers: int = 2,
) -> dict:
    from kanjirec.charset import get_charset, spread_subset
    from kanjirec.config import TrainConfig
    from kanjirec.data.store import PackedDataset
    from kanjirec.data.synth import synthesize
    from kanjirec.ensemble import build_ensemble, ensemble_markdown
    from kanjirec.evaluation.compare import compare, compare_markdown
    from kanjirec.export import export_onnx
    from kanjirec.loading import load_any
    from kanjirec.models import list_models
    from kanjirec.recognizer import Recognizer
    from kanjirec.train import train

    out = Path(out)
    shipped_model_reads(out / "shipped")
    models = models or list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        raise KanjirecError(f"unknown models {unknown}; known: {list_models()}")
    started = time.perf_counter()

    data = out / "data"
    if (data / "meta.json").is_file():
        if not PackedDataset.open(data).has_strokes:
            raise KanjirecError(
                f"{data} holds no pen trajectories (an older demo's data): remove it or pick another --out"
            )
        print(f"[demo] reusing the dataset at {data}")
    else:
        chars = spread_subset(get_charset("etl9g"), classes)
        print(
            f"[demo] synthesising {len(chars)} ETL9G classes x {per_class} samples, with their pen "
            f"trajectories, into {data}"
        )
        synthesize(chars, per_class, data, seed=seed, workers=workers, with_strokes=True)

    runs, pen_results = [], {}
    pen_models = {n for n in models if DEMO_CONFIGS.get(n, {}).get("extractor") == "pen"}
    for name in models:
        print(f"[demo] training {name} for {epochs} epochs")
        config = TrainConfig(
            model=name,
            data=str(data),
            out_dir=str(out / "runs"),
            epochs=epochs,
            batch_size=64,
            lr=2e-3,
            seed=seed,
            workers=0,
            save_every=0,
            patience=0,
            model_config=dict(DEMO_CONFIGS.get(name, {})),
            **DEMO_TRAINING.get(name, {}),
        )
        final = train(config, resume="auto")
        if name in pen_models:
            pen_results[name] = final
        else:
            runs.append(config.run_dir)

    print("[demo] comparing the image models on the writer-disjoint test split")
    result = compare(runs, data, out=out / "compare", robustness_samples=300, latency_runs=20, memory=False)
    print(compare_markdown(result))
    for name, final in pen_results.items():
        # compare and the ensemble score images; a pen model is scored by the trainer on the test
        # split's written samples (print-font samples have no trajectory).
        print(
            f"[demo] {name} reads pen trajectories: test top-1 {final['test_top1']:.2%}, top-5 "
            f"{final['test_top5']:.2%} on the {final['test_samples']} written test samples"
        )

    print("[demo] ensembling every model: calibrated fitted weights or the plain mean, the better on val")
    ensemble = build_ensemble(runs, data, out / "ensemble.json", latency_runs=20)
    print(ensemble_markdown(ensemble))

    best = max(result["rows"], key=lambda r: r["top1"])
    onnx_path = out / f"{best['name']}.onnx"
    loaded = load_any(best["path"])
    export_onnx(loaded.model, onnx_path, classes=loaded.classes)
    ds = PackedDataset.open(data)
    i = int(ds.indices("test")[0])
    top = Recognizer.load(onnx_path)(ds.images[i])
    print(
        f"[demo] exported the most accurate model to {onnx_path}; it reads test sample {i} "
        f"({ds.classes[ds.labels[i]]}) as " + ", ".join(f"{c} {p:.2f}" for c, p in top[:3])
    )
    print(f"[demo] done in {time.perf_counter() - started:.0f} s; tables and charts in {out / 'compare'}")
    return result
