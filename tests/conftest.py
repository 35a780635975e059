"""Fixtures shared by the evaluation and ensemble tests (helpers live in helpers.py)."""

import numpy as np
import pytest

from helpers import CHARS, FIXED_LOGITS, SIZE, WRITERS, FixedLogits, encode_ids, registered_model
from kanjirec.data.store import DatasetWriter, PackedDataset


@pytest.fixture()
def fixed_logits_registered():
    """The stub model ``helpers.FixedLogits`` in the registry for one test, removed afterwards."""
    with registered_model(FIXED_LOGITS, FixedLogits):
        yield


@pytest.fixture(scope="module")
def id_dataset(tmp_path_factory):
    """5 characters x 6 writers x 2 samples whose images carry their sample id; a seeded random split."""
    chars = [c for _ in WRITERS for c in CHARS for _ in range(2)]
    writers = [w for w in WRITERS for _ in CHARS for _ in range(2)]
    w = DatasetWriter(tmp_path_factory.mktemp("eval") / "ds", image_size=SIZE)
    w.add(encode_ids(np.arange(len(chars))), chars, writers, "T")
    return PackedDataset.open(w.finish(split="random", fractions=(0.4, 0.2, 0.4), seed=0))


@pytest.fixture(scope="session")
def reader_run(tmp_path_factory):
    """A run folder holding a tiny CNN that reads the characters of ``helpers.READ_CHARS``."""
    from helpers import train_reader

    return train_reader(tmp_path_factory.mktemp("reader") / "run")


@pytest.fixture(scope="session")
def reader_onnx(reader_run):
    """The reader exported to ONNX."""
    from kanjirec.export import export_onnx
    from kanjirec.loading import load_any

    loaded = load_any(reader_run)
    return export_onnx(loaded.model, reader_run.parent / "reader.onnx", classes=loaded.classes)
