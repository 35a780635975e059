"""The model registry: one factory for every architecture (timm style).

    from kanjirec.models import create_model, list_models
    model = create_model("stroke_rnn", num_classes=3036, classes=classes, hidden_size=256)

A model family registers its class with ``@register_model("name")``. ``create_model`` checks
the config keys against the constructor's keyword arguments (an unknown key raises TypeError
naming it) and records the resolved keyword arguments, defaults included, in ``model.config``
so that ``create_model(model.name, num_classes, classes=classes, **model.config)`` rebuilds
the same architecture from a checkpoint.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable

from kanjirec.errors import ModelConfigError
from kanjirec.models.base import RecognitionModel, to_float

__all__ = ["RecognitionModel", "create_model", "describe_models", "list_models", "register_model", "to_float"]

_REGISTRY: dict[str, type[RecognitionModel]] = {}

# Families are imported lazily on first use, so a new family only needs a line here.
_FAMILY_MODULES = (
    "kanjirec.models.cnn",
    "kanjirec.models.mobile_cnn",
    "kanjirec.models.radical",
    "kanjirec.models.grid_rnn",
    "kanjirec.models.stroke_rnn",
    "kanjirec.models.hybrid",
)


def register_model(name: str) -> Callable[[type[RecognitionModel]], type[RecognitionModel]]:
    """Class decorator: make a ``RecognitionModel`` subclass available to ``create_model(name)``."""

    def decorate(cls: type[RecognitionModel]) -> type[RecognitionModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is registered twice")
        if not issubclass(cls, RecognitionModel):
            raise TypeError(f"{cls.__name__} must derive from RecognitionModel")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # A family file not written yet is skipped; a missing dependency inside one is not.
            if e.name != module:
                raise


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_families()
    return sorted(_REGISTRY)


def _config_keys(cls: type[RecognitionModel]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "num_classes", "classes")}


def _like(value: object, default: object) -> bool:
    """``value`` has the kind of ``default`` (an int passes for a float, a list for a tuple, at any depth)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and all(_like(v, d) for v in value for d in default[:1])
    return isinstance(value, type(default))


def _check_config_type(name: str, key: str, value: object, default: object) -> None:
    """A model keyword argument must have the kind of its default: the constructor's signature is the
    definition (an int is accepted for a float, a list for a tuple)."""
    if default is None or default is inspect.Parameter.empty:
        return
    ok = _like(value, default)
    if not ok:
        raise ModelConfigError(
            f"model {name!r}: config key {key!r} must be like its default {default!r}, got {value!r}"
        )


def create_model(
    name: str, num_classes: int, classes: list[str] | None = None, **config: object
) -> RecognitionModel:
    """Build a registered model; ``classes`` (the class characters) is needed by the radical models."""
    _load_families()
    if name not in _REGISTRY:
        raise ModelConfigError(f"unknown model {name!r}; available models: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    keys = _config_keys(cls)
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ModelConfigError(
            f"model {name!r} got unknown config key(s) {', '.join(unknown)}; accepted: {', '.join(keys)}"
        )
    for key, value in config.items():
        _check_config_type(name, key, value, keys[key].default)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"classes has {len(classes)} entries but num_classes is {num_classes}")
    try:
        if "classes" in inspect.signature(cls.__init__).parameters:
            model = cls(num_classes, classes=classes, **config)
        else:
            model = cls(num_classes, **config)
    except (TypeError, ValueError, RuntimeError) as e:  # a value the constructor or torch refuses
        raise ModelConfigError(f"model {name!r} cannot be built with {config} ({e})") from e
    resolved = {k: p.default for k, p in keys.items() if p.default is not inspect.Parameter.empty}
    resolved.update(config)
    # Tuples become lists so the config round-trips through JSON unchanged.
    model.classes = tuple(classes) if classes is not None else None
    model.config = {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}
    return model


def describe_models(num_classes: int = 3036, charset: str = "etl9g") -> str:
    """A table of every registered model at default config: parameters and forward FLOPs (batch 1).

    The classes are the first ``num_classes`` characters of ``charset`` (the radical models
    decompose them). FLOPs exclude the stroke model's numpy feature extraction.
    """
    from kanjirec.charset import get_charset
    from kanjirec.models.base import count_flops

    chars = get_charset(charset)
    if not 1 <= num_classes <= len(chars):
        raise ValueError(f"--num-classes must be between 1 and {len(chars)} (the size of {charset!r})")
    classes = chars[:num_classes]
    lines = [f"{'model':<18} {'parameters':>12} {'MFLOPs':>10}  input of the exported graph"]
    for name in list_models():
        model = create_model(name, num_classes, classes=classes)
        flops = count_flops(model)
        lines.append(f"{name:<18} {model.num_parameters():>12,} {flops / 1e6:>10.1f}  {model.feature_kind}")
    lines.append(
        f"({num_classes} classes of {charset}; LSTM FLOPs added by formula, see models.base.count_flops)"
    )
    return "\n".join(lines)
