"""The training configuration: one dataclass, loaded from TOML or YAML, overridden on the command line.

Precedence, lowest first: the defaults below, a config file (``--config run.toml``), the
named flags (``--epochs 5 --batch-size 64 --lr 1e-3``), then ``--set key=value`` items.

A config file holds the fields of `TrainConfig` at the top level plus two tables::

    model = "cnn"
    epochs = 30
    [model_config]        # keyword arguments of the model's constructor
    head_hidden = 512
    [augment]             # distortion name -> largest strength, and p (see kanjirec.augment)
    rotation = 0.7

``--set`` keys: ``augment.NAME=0.5`` sets an augmentation strength, ``model.KEY=VALUE``
(or a bare ``KEY=VALUE`` that is not a training field) sets a model keyword argument, and a
bare training field name (``--set save_every=200``) sets that field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kanjirec.augment import check_augment_config
from kanjirec.errors import ConfigError  # defined there so augment.py raises it too; imported from here


def default_augment() -> dict[str, float]:
    """Affine, elastic, stroke width and noise, each on half the samples, at moderate strengths."""
    return {
        "p": 0.5,
        "rotation": 0.7,
        "scale": 0.6,
        "translation": 0.5,
        "elastic": 0.5,
        "thicken": 0.4,
        "thin": 0.4,
        "noise": 0.3,
    }


@dataclass
class TrainConfig:
    model: str = ""
    data: str = ""
    out_dir: str = "model_training"  # the run writes <out_dir>/<run_name>/{checkpoints,results,config}
    run_name: str = ""  # empty: the model name
    epochs: int = 30
    batch_size: int = 128  # global: split evenly across DDP ranks
    eval_batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine (linear warmup, cosine decay) | onecycle
    warmup_fraction: float = 0.05  # of all steps; one-cycle's rising phase
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    patience: int = 8  # epochs without a better val accuracy before stopping; 0 disables
    amp: str = "auto"  # auto: bf16 autocast on CUDA, off on CPU | bf16 | fp16 | off
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 2  # DataLoader worker processes
    seed: int = 0
    save_every: int = 500  # checkpoint every N steps (and at every epoch end); 0: epoch ends only
    keep_last: int = 3  # step checkpoints kept besides best.pt
    # > 0: every epoch trains on this many freshly rendered synthetic samples of the dataset's classes
    # (`data.stream`) instead of its train split; the dataset still gives the classes, val and test.
    synth_per_epoch: int = 0
    synth_font_fraction: float = 0.2  # of fresh samples drawn from print faces
    synth_fonts: str = "training"  # training: every installed training face | default: the 8 default faces
    # pen models on fresh batches: share of samples whose strokes come in a random order within each
    # KanjiVG component (real writers vary it), so recognition does not hinge on the standard order
    pen_order_shuffle: float = 0.0
    init_weights: str = ""  # a checkpoint whose weights start the run (fine-tuning); empty: random init
    augment: dict[str, float] = field(default_factory=default_augment)
    model_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / (self.run_name or self.model)

    def validate(self) -> None:
        """Raise `ConfigError` naming the key unless every field has a usable value.

        `train` calls this before it creates any file or folder, so a bad value never leaves a
        half-made run behind."""
        if not self.model:
            raise ConfigError("no model given: pass --model NAME (see `kanjirec models`)")
        if not self.data:
            raise ConfigError("no dataset given: pass --data DIR (a packed dataset)")
        for name in _FIELDS:  # types first: the range checks below compare numbers
            setattr(self, name, _coerce(name, getattr(self, name), "config"))
        for name in ("lr", "weight_decay", "warmup_fraction", "label_smoothing", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"config: {name!r} must be a finite number, got {getattr(self, name)!r}")
        checks = [
            ("schedule", self.schedule in ("cosine", "onecycle"), "'cosine' or 'onecycle'"),
            ("amp", self.amp in ("auto", "bf16", "fp16", "off"), "auto, bf16, fp16 or off"),
            (
                "device",
                self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device),
                "auto, cpu, cuda or cuda:N",
            ),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "0 (off) or more"),
            ("patience", self.patience >= 0, "0 (off) or more"),
            ("workers", self.workers >= 0, "0 or more"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
            ("save_every", self.save_every >= 0, "0 (epoch ends only) or more"),
            ("keep_last", self.keep_last >= 1, "at least 1"),
            ("run_name", Path(self.run_name).name == self.run_name, "a plain folder name (no / or ..)"),
            ("synth_per_epoch", self.synth_per_epoch >= 0, "0 (the train split) or more"),
            ("synth_font_fraction", 0 <= self.synth_font_fraction <= 1, "in [0, 1]"),
            ("synth_fonts", self.synth_fonts in ("training", "default"), "'training' or 'default'"),
            ("pen_order_shuffle", 0 <= self.pen_order_shuffle <= 1, "in [0, 1]"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"config: {name!r} must be {requirement}, got {getattr(self, name)!r}")
        if not all(isinstance(k, str) and k.isidentifier() for k in self.model_config):
            raise ConfigError(f"config: model_config keys must be names, got {list(self.model_config)}")
        check_augment_config(self.augment)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TABLES = ("augment", "model_config")
_SCALAR_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check a top-level value against the field's type (an int is accepted for a float)."""
    if key not in _FIELDS:
        raise ConfigError(f"{where}: unknown config key {key!r}; known keys: {', '.join(_FIELDS)}")
    if key in _TABLES:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} must be a table of key = value pairs")
        return dict(value)
    kind = _SCALAR_TYPES[str(_FIELDS[key].type)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value pairs of a TOML (.toml) or YAML (.yaml, .yml, .json) config file, checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable config ({e})") from e
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            raw = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: unknown config format; use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: unreadable config ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must hold key/value pairs at the top level")
    return {key: _coerce(key, value, str(path)) for key, value in raw.items()}


def parse_value(text: str) -> Any:
    """A command-line value: bool, int, float, JSON list/object, null, or else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"value {text!r} looks like JSON but does not parse ({e})") from e
    return text


def apply_set(config: TrainConfig, items: list[str]) -> None:
    """Apply ``--set key=value`` items in place (see the module docstring for the key forms)."""
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        value = parse_value(text)
        table, dot, sub = key.partition(".")
        if dot:
            if table == "augment":
                config.augment[sub] = value
            elif table in ("model", "model_config"):
                config.model_config[sub] = value
            else:
                raise ConfigError(f"--set {item!r}: prefix must be 'augment.' or 'model.'")
        elif key.replace("-", "_") in _FIELDS and key.replace("-", "_") not in _TABLES:
            name = key.replace("-", "_")
            setattr(config, name, _coerce(name, value, f"--set {item}"))
        else:
            config.model_config[key] = value


# Named flags: (flag, field, type, help). Defaults are None so that only given flags override.
_FLAGS = [
    ("--model", "model", str, "registered model name (see `kanjirec models`)"),
    ("--data", "data", str, "packed dataset directory"),
    ("--out-dir", "out_dir", str, "output root (default model_training)"),
    ("--run-name", "run_name", str, "run folder under the output root (default: the model name)"),
    ("--epochs", "epochs", int, None),
    ("--batch-size", "batch_size", int, "global batch size (split across DDP ranks)"),
    ("--eval-batch-size", "eval_batch_size", int, None),
    ("--lr", "lr", float, "peak learning rate (AdamW)"),
    ("--weight-decay", "weight_decay", float, None),
    ("--schedule", "schedule", str, "cosine | onecycle"),
    ("--warmup-fraction", "warmup_fraction", float, None),
    ("--label-smoothing", "label_smoothing", float, None),
    ("--grad-clip", "grad_clip", float, "max gradient norm, 0 disables"),
    ("--patience", "patience", int, "early stopping: epochs without val improvement, 0 disables"),
    ("--amp", "amp", str, "auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--workers", "workers", int, "DataLoader worker processes"),
    ("--seed", "seed", int, None),
    ("--save-every", "save_every", int, "checkpoint every N steps (and at each epoch end)"),
    ("--keep-last", "keep_last", int, "step checkpoints to keep besides best.pt"),
    ("--synth-per-epoch", "synth_per_epoch", int, "train on N freshly rendered samples per epoch"),
    ("--synth-font-fraction", "synth_font_fraction", float, "share of fresh samples from print faces"),
]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `kanjirec train` options; `config_from_args` turns the parsed namespace into a config."""
    p.add_argument("--config", type=Path, help="TOML or YAML config file")
    for flag, name, kind, help_text in _FLAGS:
        p.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field: model kwargs (hidden_size=256 or model.hidden_size=256), "
        "augment.rotation=0.5, or a training field (save_every=200); repeatable",
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", type=Path, help="resume from this checkpoint (default: the run's latest)")
    resume.add_argument("--no-resume", action="store_true", help="start afresh, removing old checkpoints")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    config = TrainConfig(**values)
    for _, name, _, _ in _FLAGS:
        given = getattr(args, name, None)
        if given is not None:
            setattr(config, name, given)
    if args.no_augment:
        config.augment = {}
    apply_set(config, args.set_items)
    config.validate()
    return config


def resume_from_args(args: argparse.Namespace) -> str:
    """``"auto"`` (the run's latest checkpoint, if any), ``"none"``, or a checkpoint path."""
    if args.no_resume:
        return "none"
    return str(args.resume) if args.resume else "auto"


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML; `load_config_file` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the seed's scripts (scripts/train_*.py)


def add_seed_script_arguments(p: argparse.ArgumentParser) -> None:
    """The flags the seed's training scripts share; each script adds its model's own."""
    p.add_argument("--data-dir", type=Path, default=Path("dataset"), help="packed dataset directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--output-dir", default=None, help="output root (default model_training)")
    p.add_argument("--config", type=Path, help="TOML or YAML config file")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-resume", action="store_true", help="start afresh instead of resuming")
    p.add_argument(
        "--make-synthetic",
        action="store_true",
        help="if --data-dir holds no packed dataset, synthesise the default one there first "
        "(ETL9G's 3,036 characters, 20 samples each, from KanjiVG strokes and fonts)",
    )


def seed_script_config(args: argparse.Namespace, model: str, model_config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a seed script's flags describe (same precedence as `kanjirec train`)."""
    config = TrainConfig(**(load_config_file(args.config) if args.config else {}))
    config.model, config.data = model, str(args.data_dir)
    for name, value in (
        ("out_dir", args.output_dir),
        ("epochs", args.epochs),
        ("batch_size", args.batch_size),
        ("lr", args.learning_rate),
    ):
        if value is not None:
            setattr(config, name, value)
    config.model_config.update({k: v for k, v in model_config.items() if v is not None})
    apply_set(config, args.set_items)
    config.validate()
    return config
