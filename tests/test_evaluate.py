"""Evaluation: metrics on models whose outputs we control, class mapping, robustness, comparison."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import CHARS, SMALL, fixed_logits, save_run, table_with_ranks, tiny_cnn
from kanjirec.augment import DISTORTIONS
from kanjirec.evaluation.compare import compare
from kanjirec.evaluation.metrics import expected_calibration_error
from kanjirec.evaluation.predict import map_classes, predict
from kanjirec.evaluation.report import evaluate
from kanjirec.evaluation.robustness import robustness_suite
from kanjirec.export import sample_images
from kanjirec.inference import inference_copy, torch_threads
from kanjirec.loading import LoadedModel
from kanjirec.models import create_model, list_models


@pytest.mark.usefixtures("fixed_logits_registered")
def test_topk_accuracy_equals_hand_computed_values(id_dataset, tmp_path):
    # The model knows 3 extra characters and orders its classes differently from the dataset.
    model_classes = list("かきく") + list(reversed(CHARS))
    test = id_dataset.indices("test")
    ranks = {int(i): j % 8 for j, i in enumerate(test)}
    run = save_run(
        tmp_path / "run", fixed_logits(table_with_ranks(id_dataset, model_classes, ranks)), model_classes
    )
    report = evaluate(run, id_dataset.path, split="test", out=tmp_path)

    n = len(test)
    assert report["samples"] == n and report["unknown"]["samples"] == 0
    # Rank j % 8 of sample j: rank 0 for j = 0, 8, 16, ...; rank < 5 for j % 8 in 0..4.
    assert report["top1"] == pytest.approx(sum(1 for j in range(n) if j % 8 == 0) / n)
    assert report["top5"] == pytest.approx(sum(1 for j in range(n) if j % 8 < 5) / n)
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved["top1"] == report["top1"]
    for name in ("report.md", "confusions.png", "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_expected_calibration_error_of_calibrated_and_overconfident_predictions():
    rng = np.random.default_rng(0)
    # Calibrated: in each group, exactly the stated share of predictions is right.
    conf = np.concatenate([np.full(400, 0.35), np.full(600, 0.75)])
    correct = np.concatenate([rng.permutation(np.arange(400) < 140), rng.permutation(np.arange(600) < 450)])
    ece, bins = expected_calibration_error(conf, correct)
    assert ece == pytest.approx(0.0, abs=1e-9)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 1000
    # Overconfident: 95% confidence, 60% right.
    ece, _ = expected_calibration_error(np.full(1000, 0.95), np.arange(1000) < 600)
    assert ece == pytest.approx(0.35)


@pytest.mark.usefixtures("fixed_logits_registered")
def test_confused_pairs_and_per_writer_accuracy(id_dataset, tmp_path):
    classes = list(CHARS)
    test = id_dataset.indices("test")
    labels = id_dataset.labels[test]
    writer = np.array(id_dataset.writers)[id_dataset.writer_ids[test]]
    ranks = {}
    for i, lab, w in zip(test, labels, writer, strict=True):
        if classes[lab] == "あ":
            ranks[int(i)] = 1  # あ read as い: い is the top class after removing あ
        elif classes[lab] == "う" and w == "T/w0":
            ranks[int(i)] = 1  # う read as あ (the first other class) for one writer
    model = fixed_logits(table_with_ranks(id_dataset, classes, ranks))
    report = evaluate(LoadedModel("stub", model, classes), id_dataset.path, split="test", out=tmp_path)

    n_a = int((labels == 0).sum())
    n_u_w0 = int(((labels == 2) & (writer == "T/w0")).sum())
    assert report["confused_pairs"][0] == {"true": "あ", "predicted": "い", "count": n_a}
    assert {"true": "う", "predicted": "あ", "count": n_u_w0} in report["confused_pairs"]
    per_class = {c["char"]: c["top1"] for c in report["per_class"]}
    assert per_class["あ"] == 0.0 and per_class["い"] == 1.0
    for row in report["per_writer"]:
        mask = writer == row["writer"]
        wrong = ((labels == 0) | ((labels == 2) & (writer == "T/w0")))[mask]
        assert row["samples"] == mask.sum()
        assert row["top1"] == pytest.approx(1 - wrong.mean())
        expected = ["あ->い"] * int((labels[mask] == 0).sum()) + ["う->あ"] * int(
            ((labels == 2) & (writer == "T/w0"))[mask].sum()
        )
        assert sorted(row["misread"]) == sorted(expected)  # which characters this writer loses, and to what


@pytest.mark.usefixtures("fixed_logits_registered")
def test_unknown_characters_are_counted_and_reported(id_dataset):
    model_classes = list("あいうえ")  # the model never learned お
    test = id_dataset.indices("test")
    mapping = map_classes(id_dataset.classes, model_classes, id_dataset.labels[test])
    n_o = int((id_dataset.labels[test] == CHARS.index("お")).sum())
    assert mapping.unknown == {"お": n_o}
    assert (mapping.targets == -1).sum() == n_o

    model = fixed_logits(table_with_ranks(id_dataset, model_classes, {}))
    report = evaluate(LoadedModel("stub", model, model_classes), id_dataset.path, split="test")
    assert report["unknown"] == {"samples": n_o, "characters": {"お": n_o}}
    assert report["known_samples"] == len(test) - n_o
    assert report["top1"] == 1.0  # scored over the known samples only, not diluted by お


def test_predictions_do_not_depend_on_how_many_batches_run_at_once(id_dataset):
    # Batches run on parallel threads when torch has several; each distorted batch draws from its
    # own generator, so the order batches finish in cannot change what any model sees.
    models = {"a": tiny_cnn(0), "b": tiny_cnn(1)}
    idx = np.arange(len(id_dataset))
    targets = {k: id_dataset.labels.astype(np.int64) for k in models}
    runs = []
    for threads in (1, 3):
        with torch_threads(threads):
            runs.append(
                predict(
                    models,
                    id_dataset.images,
                    idx,
                    targets,
                    distortion=DISTORTIONS["elastic"],
                    strength=0.8,
                    seed=5,
                    batch_size=7,
                )
            )
    for name in models:
        one, many = runs[0][name], runs[1][name]
        np.testing.assert_array_equal(one.topk_idx, many.topk_idx)
        np.testing.assert_allclose(one.topk_prob, many.topk_prob, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(one.target_prob, many.target_prob, rtol=1e-5, atol=1e-7)


def test_robustness_suite_covers_every_distortion_and_severity_deterministically(id_dataset):
    models = {"a": tiny_cnn(0), "b": tiny_cnn(1)}
    idx = id_dataset.indices("test")
    targets = {k: id_dataset.labels[idx].astype(np.int64) for k in models}
    first = robustness_suite(models, id_dataset.images, idx, targets, samples=10, seed=3)
    second = robustness_suite(models, id_dataset.images, idx, targets, samples=10, seed=3)
    assert first == second
    for r in first.values():
        assert set(r["accuracy"]) == set(DISTORTIONS)
        assert all(len(v) == 3 for v in r["accuracy"].values())
        assert r["samples"] == 10
        rel = [a / r["clean_top1"] for v in r["accuracy"].values() for a in v] if r["clean_top1"] else [0.0]
        assert r["score"] == pytest.approx(np.mean(rel))


def test_compare_writes_one_table_with_every_run(id_dataset, tmp_path):
    root = tmp_path / "model_training"
    save_run(root / "cnn_a", tiny_cnn(0), CHARS)
    save_run(root / "cnn_b", tiny_cnn(1), CHARS)
    result = compare(None, id_dataset.path, root=root, out=tmp_path, robustness_samples=8, latency_runs=3)
    assert [r["name"] for r in result["rows"]] == ["cnn_a", "cnn_b"]
    for row in result["rows"]:
        assert row["model"] == "cnn"
        assert row["parameters"] == sum(p.numel() for p in tiny_cnn(0).parameters())
        assert row["flops"] > 0 and row["latency_ms"] > 0 and row["peak_mib"] > 0
        assert row["checkpoint_mib"] > row["weights_mib"] > 0
        assert 0 <= row["robustness"]
    table = (tmp_path / "compare.md").read_text(encoding="utf-8")
    assert "| cnn_a |" in table and "| cnn_b |" in table
    assert json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))["robustness_samples"] == 8
    for name in ("accuracy_vs_latency.png", "accuracy_vs_size.png", "robustness.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("name", list_models())
def test_inference_copy_computes_the_same_logits_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = create_model(name, 4, classes=list("明林語川"), **SMALL.get(name, {})).eval()
    for m in model.modules():  # batch-norm statistics away from the identity, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = sample_images(5)
    fast = inference_copy(model)
    with torch.inference_mode():
        np.testing.assert_allclose(fast(images).numpy(), model(images).numpy(), atol=1e-4, rtol=1e-4)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (fast is not model)
