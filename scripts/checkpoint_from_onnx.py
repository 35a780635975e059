"""A training checkpoint of an exported `mobile_cnn` (the shipped model), to continue training it.

The exporter folds each batch norm into the layer before it, so the ONNX file holds the function,
not the parameters the training loop uses. This script gives them back, exactly for inference and
closely for training: each batch norm gets, as running statistics, the mean and variance of its
input over a batch of images from ``--data``, and the scale and shift that make it compute what the
folded graph computes. In training mode the batch statistics are then close to the running ones, so
the first steps continue the model instead of re-normalising it. The checkpoint is checked against
ONNX Runtime on that batch (max logit difference printed, at most 1e-3) before it is written, and it
is a model-only checkpoint for ``init_weights`` (optimizer and schedule start afresh).

    python scripts/checkpoint_from_onnx.py [--onnx FILE] --data DATA --out best.pt

Used when a shipped model's run folder is gone (stage 6 of the shipped recogniser started from it:
docs/results/shipped/README.md); it also starts a fine-tune of the shipped model on your own data.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from kanjirec.checkpoint import FORMAT, VERSION, atomic_torch_save
from kanjirec.errors import KanjirecError
from kanjirec.models import create_model

SUFFIX = "_bias"  # the exporter's name for a folded batch norm's shift, beside the conv weight


def _initializers(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise KanjirecError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    tensors = {t.name.removeprefix("inner."): numpy_helper.to_array(t) for t in proto.graph.initializer}
    meta = {p.key: p.value for p in proto.metadata_props}
    return tensors, meta


def recover(onnx_path: str, images: np.ndarray) -> tuple[torch.nn.Module, dict[str, str], float]:
    """The PyTorch model of ``onnx_path`` with batch norms restored from ``images`` (uint8 (n, 64, 64)),
    its metadata, and the largest logit difference from ONNX Runtime on those images."""
    import onnxruntime as ort

    tensors, meta = _initializers(onnx_path)
    if meta.get("kanjirec.model") != "mobile_cnn":
        raise KanjirecError(
            f"{onnx_path}: holds {meta.get('kanjirec.model')!r}; this script restores mobile_cnn"
        )
    classes = json.loads(meta["kanjirec.classes"])
    config = json.loads(meta["kanjirec.config"])
    model = create_model("mobile_cnn", len(classes), classes=classes, **config)
    state = model.state_dict()
    modules = dict(model.named_modules())
    norms = [n for n, m in modules.items() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    shift: dict[str, torch.Tensor] = {}  # batch norm -> the folded shift it must add
    for norm in norms:
        parent, index = norm.rsplit(".", 1)
        before = f"{parent}.{int(index) - 1}"
        weight = torch.from_numpy(tensors.pop(f"{before}.weight").copy())
        state[f"{before}.weight"] = weight
        if f"{before}.bias" in state:  # a linear layer keeps its own (folded) bias
            state[f"{before}.bias"] = torch.from_numpy(tensors.pop(f"{before}.bias").copy())
            shift[norm] = torch.zeros(weight.shape[0])
        else:
            shift[norm] = torch.from_numpy(tensors.pop(f"{before}.weight{SUFFIX}").copy())
    for name in list(tensors):
        if name in state:
            state[name] = torch.from_numpy(tensors.pop(name).copy())
    left = [n for n in tensors if not n.startswith("val_")]  # val_*: the exporter's shape constants
    if left:
        raise KanjirecError(f"{onnx_path}: initializers {left} match no parameter of mobile_cnn {config}")
    # First an identity-like parameterisation (exact in eval mode), to record each norm's input.
    for norm in norms:
        module = modules[norm]
        state[f"{norm}.running_mean"] = torch.zeros_like(shift[norm])
        state[f"{norm}.running_var"] = torch.ones_like(shift[norm])
        state[f"{norm}.weight"] = torch.full_like(shift[norm], float(np.sqrt(1 + module.eps)))
        state[f"{norm}.bias"] = shift[norm]
    model.load_state_dict(state, strict=True)
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        modules[n].register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, args[0].detach()))
        for n in norms
    ]
    batch = torch.from_numpy(images[:, None])
    with torch.no_grad():
        features = model.extract_features(batch)
        model.forward_features(*features)
    for h in hooks:
        h.remove()
    for norm in norms:
        x = seen[norm].transpose(0, 1).reshape(len(shift[norm]), -1).double()
        mean, var = x.mean(1), x.var(1, unbiased=False)
        eps = modules[norm].eps
        state[f"{norm}.running_mean"] = mean.float()
        state[f"{norm}.running_var"] = var.float()
        state[f"{norm}.weight"] = (var + eps).sqrt().float()
        state[f"{norm}.bias"] = (shift[norm].double() + mean).float()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        ours = model.forward_features(*features).numpy()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"images": features[0].numpy()})[0]
    return model, meta, float(np.abs(ours - theirs).max())


def main() -> int:
    from kanjirec.data.store import PackedDataset
    from kanjirec.loading import SHIPPED_MODEL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--onnx", default=str(SHIPPED_MODEL), help="exported mobile_cnn (default: the shipped model)"
    )
    parser.add_argument("--data", required=True, help="packed dataset whose train split gives the statistics")
    parser.add_argument("--samples", type=int, default=4096, help="images for the batch statistics")
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    args = parser.parse_args()
    try:
        ds = PackedDataset.open(args.data)
        rows = ds.indices("train")
        rows = np.sort(np.random.default_rng(0).choice(rows, min(args.samples, len(rows)), replace=False))
        images = np.stack([np.asarray(ds.images[int(i)]) for i in rows])
        model, meta, error = recover(args.onnx, images)
        if error > 1e-3:
            raise KanjirecError(
                f"{args.onnx}: the restored model's logits differ from ONNX Runtime by {error:.2e}"
            )
        classes = json.loads(meta["kanjirec.classes"])
        atomic_torch_save(
            {
                "format": FORMAT,
                "version": VERSION,
                "model_name": "mobile_cnn",
                "model_config": json.loads(meta["kanjirec.config"]),
                "classes": classes,
                "config": {"restored_from": str(args.onnx)},
                "model": model.state_dict(),
                "metrics": {},
            },
            args.out,
        )
    except (KanjirecError, OSError) as e:
        print(f"checkpoint_from_onnx: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out}: mobile_cnn, {len(classes)} classes; "
        f"max logit difference from ONNX Runtime {error:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
