"""Ensembles: probability averaging, calibration and fitted weights, the saved manifest, class-list
checks, and the single-graph ONNX export."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import CHARS, SMALL, encode_ids, fixed_logits, save_run, table_with_ranks
from kanjirec.cli import main
from kanjirec.data.store import DatasetWriter, PackedDataset
from kanjirec.ensemble import (
    TEMPERATURES,
    build_ensemble,
    calibrate_temperature,
    check_same_classes,
    fit_weights,
)
from kanjirec.errors import CheckpointError, KanjirecError
from kanjirec.evaluation.predict import predict
from kanjirec.evaluation.report import evaluate
from kanjirec.export import export_onnx
from kanjirec.loading import load_ensemble, save_ensemble
from kanjirec.models import create_model
from kanjirec.models.ensemble import EnsembleModel, Pooling
from kanjirec.recognizer import Recognizer


@pytest.mark.usefixtures("fixed_logits_registered")
def test_ensemble_of_known_logits_gives_the_weighted_average_of_probabilities():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 10, 4)).astype(np.float32) * 3
    ensemble = EnsembleModel([fixed_logits(a), fixed_logits(b)], [0.25, 0.75], list("abcd"), [2.0, 0.5])
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 1] = torch.arange(10)  # the stub reads the sample id from this pixel
    probs = torch.softmax(ensemble(images), dim=1).detach().numpy()
    expected = (
        0.25 * torch.softmax(torch.tensor(a) / 2.0, 1).numpy()
        + 0.75 * torch.softmax(torch.tensor(b) / 0.5, 1).numpy()
    )
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_fit_weights_minimises_nll_and_favours_the_more_accurate_member():
    rng = np.random.default_rng(0)
    good = rng.uniform(0.6, 1.0, 500)  # probability each member gives the true class
    poor = rng.uniform(0.0, 0.3, 500)
    w = fit_weights(np.stack([poor, good], axis=1))
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.9

    def nll(x):
        return -np.log(np.stack([poor, good], 1) @ np.array([1 - x, x])).mean()

    grid = np.linspace(0, 1, 1001)
    assert nll(w[1]) <= min(nll(x) for x in grid) + 1e-6


@pytest.mark.usefixtures("fixed_logits_registered")
def test_calibration_recovers_the_temperature_of_over_and_under_confident_members():
    # Labels drawn from softmax(z): z itself is calibrated, so a member emitting z * s needs T = s.
    rng = np.random.default_rng(0)
    n, c = 4000, 8
    z = rng.normal(size=(n, c)).astype(np.float32) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    scales = {"under": 0.3, "calibrated": 1.0, "over": 3.0}
    models = {k: fixed_logits(z * s) for k, s in scales.items()}
    pred = predict(
        models, encode_ids(np.arange(n)), np.arange(n), {k: labels for k in models}, temperatures=TEMPERATURES
    )
    for name, s in scales.items():
        t = TEMPERATURES[calibrate_temperature(pred[name].target_logp_t)]
        assert t == pytest.approx(s, rel=0.1), name


@pytest.fixture()
def complementary_dataset(tmp_path):
    """600 samples (5 characters x 120 writers, one each per writer), writer-disjoint split."""
    chars = [c for _ in range(120) for c in CHARS]
    writers = [f"T/w{i}" for i in range(120) for _ in CHARS]
    w = DatasetWriter(tmp_path / "comp", image_size=16)
    w.add(encode_ids(np.arange(len(chars))), chars, writers, "T")
    return PackedDataset.open(w.finish(split="writer", fractions=(0.4, 0.3, 0.3), seed=0))


@pytest.mark.usefixtures("fixed_logits_registered")
def test_fitted_weights_keep_an_under_confident_member_that_is_right_where_the_other_is_wrong(
    complementary_dataset, tmp_path
):
    # 'sharp' is right on 2 samples in 3 with confident logits; 'timid' is right on a different
    # 2 in 3, but its logits are scaled down 8x, as label smoothing leaves real members. The
    # uncalibrated probabilities say timid knows little; calibration shows it knows as much.
    ds, classes = complementary_dataset, list(CHARS)
    n, rows = len(ds), np.arange(len(ds))
    truth = np.array([classes.index(ds.classes[k]) for k in ds.labels])
    wrong = (truth + 1 + np.random.default_rng(0).integers(0, 4, n)) % 5  # the top class when wrong
    other = (wrong + 1) % 5  # the runner-up when right: never the class the other member wrongly picks
    other = np.where(other == truth, (other + 1) % 5, other)

    def table(right: np.ndarray) -> np.ndarray:
        t = np.zeros((n, 5), np.float32)
        t[rows, np.where(right, truth, wrong)] = 4
        t[rows, np.where(right, other, truth)] = 2
        return t

    sharp = table(rows % 3 != 0)
    timid = table(rows % 3 != 2) / 8
    runs = [
        save_run(tmp_path / "sharp", fixed_logits(sharp), classes),
        save_run(tmp_path / "timid", fixed_logits(timid), classes),
    ]
    report = build_ensemble(runs, ds.path, tmp_path / "ens.json", latency_runs=2)
    temps, weights = report["temperatures"]["fitted"], report["weights"]["fitted"]
    assert temps["timid"] == pytest.approx(temps["sharp"] / 8, rel=0.15)
    assert 0.3 < weights["timid"] < 0.7
    acc = report["accuracy"]
    assert acc["ensemble-fitted"]["top1"] > max(acc["sharp"]["top1"], acc["timid"]["top1"])
    # Plain averaging of the raw probabilities follows the confident member alone.
    assert acc["ensemble-mean"]["top1"] == pytest.approx(acc["sharp"]["top1"])
    # Chosen on the validation split, never on test: the fitted pooling is kept there too.
    assert report["fit_top1"]["fitted"] > report["fit_top1"]["mean"]
    assert (
        report["weighting"] == "fitted" and load_ensemble(tmp_path / "ens.json")[1]["weighting"] == "fitted"
    )


def test_an_ensemble_exports_as_one_onnx_graph_that_matches_pytorch(tmp_path, capsys):
    classes = list("明林語川")
    # Two members share the image input; the two stroke extractors each get their own inputs.
    configs = {
        "contour": ("stroke_rnn", SMALL["stroke_rnn"]),
        "cnn": ("cnn", SMALL["cnn"]),
        "skeleton": ("stroke_rnn", {**SMALL["stroke_rnn"], "extractor": "skeleton"}),
        "cnn2": ("cnn", SMALL["cnn"]),
    }
    torch.manual_seed(0)
    paths = [
        save_run(tmp_path / name, create_model(model, len(classes), classes=classes, **cfg), classes)
        for name, (model, cfg) in configs.items()
    ]
    manifest = save_ensemble(
        tmp_path / "ens.json",
        paths,
        Pooling(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.7, 1.5, 1.0, 2.0])),
        classes,
        weighting="fitted",
    )
    out = tmp_path / "ens.onnx"
    assert main(["export", str(manifest), "--out", str(out)]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out

    recognizer = Recognizer.load(out)
    assert recognizer.model.preprocessing == "strokes:contour:30,images,strokes:skeleton:30"
    assert [i.name for i in recognizer.model.session().get_inputs()] == [
        "strokes",
        "lengths",
        "images",
        "strokes_2",
        "lengths_2",
    ]
    rng = np.random.default_rng(1)
    images = ((rng.random((5, 8, 8)) > 0.6) * 255).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    model, _ = load_ensemble(manifest)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)[:, None]).numpy()
    np.testing.assert_allclose(recognizer.logits(images), expected, atol=1e-4, rtol=0)
    # The ensemble's log-probabilities are read as logits: its probabilities come back.
    np.testing.assert_allclose(recognizer.probabilities(images), np.exp(expected), atol=1e-5, rtol=0)


def test_an_ensemble_with_an_onnx_member_is_refused_by_export_naming_it(tmp_path, capsys):
    classes = list("明林語川")
    torch.manual_seed(0)
    model = create_model("cnn", len(classes), classes=classes, **SMALL["cnn"])
    run = save_run(tmp_path / "cnn", model, classes)
    onnx_file = export_onnx(model, tmp_path / "cnn.onnx")
    manifest = save_ensemble(
        tmp_path / "ens.json", [run, onnx_file], Pooling.mean(2), classes, weighting="mean"
    )
    assert main(["export", str(manifest), "--out", str(tmp_path / "ens.onnx")]) == 2
    assert "member 1: " in (err := capsys.readouterr().err)
    assert "cnn.onnx is an ONNX file, not a PyTorch model; an ensemble exports from checkpoints" in err
    assert not (tmp_path / "ens.onnx").exists()


@pytest.mark.usefixtures("fixed_logits_registered")
def test_manifest_versions_and_bad_fields_are_read_or_refused_by_name(tmp_path):
    classes = list(CHARS)
    paths = [
        save_run(tmp_path / f"m{k}", fixed_logits(np.eye(5, dtype=np.float32) * k), classes) for k in (1, 2)
    ]
    manifest = save_ensemble(tmp_path / "ens.json", paths, Pooling.mean(2), classes, weighting="mean")
    data = json.loads(manifest.read_text(encoding="utf-8"))

    def load(**changes):
        path = tmp_path / "edited.json"
        path.write_text(json.dumps({**data, **changes}), encoding="utf-8")
        return load_ensemble(path)

    # Version 1 had no temperatures: members are used as they are.
    v1 = {k: v for k, v in data.items() if k != "temperatures"}
    (tmp_path / "v1.json").write_text(json.dumps({**v1, "version": 1}), encoding="utf-8")
    model, info = load_ensemble(tmp_path / "v1.json")
    assert info["temperatures"] == [1.0, 1.0] and model.temperatures.tolist() == [1.0, 1.0]
    with pytest.raises(CheckpointError, match="version-1 .* no field 'temperatures'"):
        load(version=1)
    with pytest.raises(CheckpointError, match="edited.json: field 'temperatures' must be a list of 2 finite"):
        load(temperatures=[1.0, None])
    with pytest.raises(CheckpointError, match="field 'weights' must be a list of 2"):
        load(weights=[1.0])
    with pytest.raises(CheckpointError, match="lacks the field 'temperatures'"):
        (tmp_path / "edited.json").write_text(json.dumps(v1), encoding="utf-8")
        load_ensemble(tmp_path / "edited.json")


@pytest.fixture()
def runs(id_dataset, tmp_path, fixed_logits_registered):
    """Two runs: 'good' ranks the true class first for 5 of 6 samples, 'poor' for 1 of 3."""
    classes = list(CHARS)
    ids = np.arange(len(id_dataset))
    good = table_with_ranks(id_dataset, classes, {int(i): 0 if i % 6 else 1 for i in ids})
    poor = table_with_ranks(id_dataset, classes, {int(i): 0 if i % 3 == 0 else 2 for i in ids})
    return [
        save_run(tmp_path / "model_training" / "good", fixed_logits(good), classes),
        save_run(tmp_path / "model_training" / "poor", fixed_logits(poor), classes),
    ]


def test_fitted_ensemble_weights_favour_the_better_model_and_report_gain_and_cost(id_dataset, runs, tmp_path):
    report = build_ensemble(runs, id_dataset.path, tmp_path / "ens.json", weighting="fitted", latency_runs=3)
    fitted = report["weights"]["fitted"]
    assert fitted["good"] > fitted["poor"]
    assert report["best_single"] == "good"
    acc = report["accuracy"]
    assert report["gain_top1"] == pytest.approx(acc["ensemble-fitted"]["top1"] - acc["good"]["top1"])
    assert set(report["latency_ms"]) == {"good", "ensemble-fitted"} and report["latency_ratio"] > 0
    assert set(acc) == {"good", "poor", "ensemble-mean", "ensemble-fitted"}


def test_saved_ensemble_reloads_and_evaluates_identically(id_dataset, runs, tmp_path):
    manifest = tmp_path / "ens.json"
    report = build_ensemble(runs, id_dataset.path, manifest, weighting="fitted", latency_runs=3)
    # Moving the folder keeps the ensemble loadable: members are stored relative to the manifest.
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    shutil.copytree(tmp_path, moved)
    model, info = load_ensemble(moved / "ens.json")
    assert info["weights"] == pytest.approx(list(report["weights"]["fitted"].values()))
    result = evaluate(moved / "ens.json", id_dataset.path, split="test")
    assert result["top1"] == report["accuracy"]["ensemble-fitted"]["top1"]
    assert result["top5"] == report["accuracy"]["ensemble-fitted"]["top5"]
    shutil.rmtree(moved)


def test_members_must_share_the_class_list(id_dataset, runs, tmp_path):
    other = list("あいうえか")
    run = save_run(tmp_path / "other", fixed_logits(np.zeros((len(id_dataset), 5), np.float32)), other)
    with pytest.raises(KanjirecError, match="share the class list.*only in good.*お.*only in other.*か"):
        build_ensemble([runs[0], run], id_dataset.path, tmp_path / "bad.json")
    with pytest.raises(KanjirecError, match="different order"):
        check_same_classes({"a": list("ab"), "b": list("ba")})


def test_cli_builds_an_ensemble_that_evaluate_accepts(id_dataset, runs, tmp_path, capsys):
    out = tmp_path / "ens.json"
    argv = [
        "ensemble",
        *map(str, runs),
        "--data",
        str(id_dataset.path),
        "--out",
        str(out),
        "--latency-runs",
        "2",
    ]
    assert main(argv) == 0
    assert "Gain over the best single model (good)" in capsys.readouterr().out
    assert json.loads(out.read_text(encoding="utf-8"))["format"] == "kanjirec-ensemble"
    assert main(["evaluate", str(out), "--data", str(id_dataset.path), "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "reliability.png").is_file()
    assert main(["ensemble", str(runs[0]), "--data", str(id_dataset.path), "--out", str(out)]) == 2
