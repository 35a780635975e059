"""Shared test helpers: a stub model whose logits the test sets, and a dataset it can read.

The stub is registered in the model registry only inside ``registered_model`` (the
``fixed_logits_registered`` fixture of conftest.py), so ``list_models()`` outside those
tests, including at collection time where tests are parametrised over it, is the real zoo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from kanjirec.checkpoint import CheckpointManager
from kanjirec.data.kanjivg import load_kanjivg
from kanjirec.models import RecognitionModel, create_model

CHARS = "あいうえお"
WRITERS = [f"T/w{i}" for i in range(6)]
SIZE = 16
FIXED_LOGITS = "fixed_logits_for_tests"
# Small configurations of every registered model, for tests that build each one.
SMALL = {
    "cnn": dict(channels=(8, 16, 16, 32), head_hidden=32),
    "mobile_cnn": dict(stem=8, stages=[[16, 1], [32, 1]], embedding=16),
    "basic_rnn": dict(hidden_size=16),
    "stroke_rnn": dict(hidden_size=16, num_heads=4, head_hidden=16),
    "hybrid_cnn_rnn": dict(channels=(8, 16, 16, 32), global_dim=16, hidden_size=16, head_hidden=16),
    "radical_attn_rnn": dict(embed_dim=16, hidden_size=16, channels=(8, 16, 32)),
    "radical_rnn": dict(embed_dim=16, hidden_size=16, channels=(8, 16, 32), detector_hidden=32),
}


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """Blank images carrying their sample id in two pixels, so a stub model can look it up."""
    images = np.zeros((len(ids), SIZE, SIZE), np.uint8)
    images[:, 0, 0] = ids // 256
    images[:, 0, 1] = ids % 256
    images[:, 4:12, 8] = 255  # a stroke, so distortions have ink to work on
    return images


class FixedLogits(RecognitionModel):
    """Returns row ``id`` of a logit table for the image carrying sample id ``id``.

    Registered (inside ``registered_model``) like any model, so it is checkpointed and loaded
    through the real path.
    """

    def __init__(self, num_classes: int, *, rows: int = 1):
        super().__init__(num_classes)
        self.register_buffer("table", torch.zeros(rows, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()
        return self.table[ids.clamp(max=len(self.table) - 1)]


@contextmanager
def registered_model(name: str, cls: type[RecognitionModel]) -> Iterator[type[RecognitionModel]]:
    """Make ``cls`` available to ``create_model(name)`` (and checkpoint loading) for the block only."""
    from kanjirec.models import _REGISTRY, list_models, register_model

    if name in list_models():  # also loads the real families, so none registers inside the block
        raise RuntimeError(f"model name {name!r} is already registered")
    register_model(name)(cls)
    try:
        yield cls
    finally:
        del _REGISTRY[name]


def fixed_logits(table: np.ndarray) -> FixedLogits:
    """A stub returning ``table[id]``; needs the ``fixed_logits_registered`` fixture."""
    model = create_model(FIXED_LOGITS, table.shape[1], rows=len(table))
    model.table.copy_(torch.as_tensor(table))
    return model


def save_run(run_dir, model: nn.Module, classes) -> Path:
    """A run folder with a best.pt, as the trainer writes it."""
    state = {
        "model_name": model.name,
        "model_config": model.config,
        "classes": list(classes),
        "config": {},
        "model": model.state_dict(),
    }
    CheckpointManager(Path(run_dir) / "checkpoints").save(state, 1, is_best=True)
    return Path(run_dir)


def table_with_ranks(ds, model_classes, ranks: dict[int, int]) -> np.ndarray:
    """Logits where sample i's true class sits at rank ranks[i] (0 = top); other samples: rank 0."""
    n_cls = len(model_classes)
    table = np.zeros((len(ds), n_cls), np.float32)
    col = {c: k for k, c in enumerate(model_classes)}
    for i in range(len(ds)):
        true = col.get(ds.classes[ds.labels[i]])
        others = [k for k in range(n_cls) if k != true]
        order = others.copy()
        if true is not None:
            order.insert(ranks.get(i, 0), true)
        table[i, order] = np.arange(n_cls, 0, -1)  # position 0 gets the largest logit
    return table


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", len(CHARS), channels=(4, 8), convs_per_block=1, head_hidden=16).eval()


def shifted_renders(chars) -> tuple[torch.Tensor, torch.Tensor]:
    """Two renders of each character, the second shifted: uint8 images (2n, 1, 64, 64), labels (2n,)."""
    images = [render(c, shift) for c in chars for shift in ((0, 0), (2, -1))]
    labels = [i for i in range(len(chars)) for _ in range(2)]
    return torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels)


def render(char: str, shift: tuple[float, float] = (0, 0), scale: float = 0.85, width: int = 3) -> np.ndarray:
    """KanjiVG strokes drawn as 255 on 0 at 64x64 (the dataset convention)."""
    image = Image.new("L", (64, 64), 0)
    draw = ImageDraw.Draw(image)
    for stroke in load_kanjivg()[char].strokes:
        points = (stroke.points - 54.5) * scale * 64 / 109 + 32 + np.asarray(shift)
        draw.line([tuple(p) for p in points], fill=255, width=width, joint="curve")
    return np.asarray(image)


# ---------------------------------------------------------------- a small model that reads real characters

READ_CHARS = "田川人一"


def render_writers(chars: str, writers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic handwriting (the training renderer, ink 255 on 0, 64x64) of each character by
    ``writers`` random writers: images (n, 64, 64) uint8 and labels (index into ``chars``)."""
    from kanjirec.data.kanjivg import load_kanjivg
    from kanjirec.data.synth import StrokeBank, draw_writer_styles, stroke_images

    kanjivg = load_kanjivg()
    bank = StrokeBank.build([kanjivg[c] for c in chars])
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(chars)), writers)
    style = {k: np.repeat(v, len(chars)) for k, v in draw_writer_styles(rng, writers).items()}
    images, _ = stroke_images(bank, labels, style, rng, size=64)
    return images, labels


def train_reader(run_dir: Path, chars: str = READ_CHARS, steps: int = 100, seed: int = 0) -> Path:
    """A tiny CNN trained for a few seconds on synthetic handwriting of ``chars``, saved as a run.

    It sees each image both as rendered and cropped to its ink (what `recognizer.to_convention`
    gives), so it reads files through the recogniser and pen-stroke images alike."""
    from kanjirec.data.preprocess import normalize_images
    from kanjirec.inference import torch_threads

    images, labels = render_writers(chars, 60, seed)
    cropped = normalize_images(images, max_level=255, size=64, crop=True)
    x = torch.from_numpy(np.concatenate([images, cropped]))[:, None]
    y = torch.from_numpy(np.concatenate([labels, labels]))
    torch.manual_seed(seed)
    model = create_model(
        "cnn", len(chars), classes=list(chars), channels=(8, 16), convs_per_block=1, head_hidden=32
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch_threads(1):  # tiny convolutions: one thread is fastest, above all on a busy machine
        for _ in range(steps):
            batch = torch.randint(0, len(x), (32,), generator=generator)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return save_run(run_dir, model.eval(), chars)
