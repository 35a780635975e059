"""Ensembles: probability averaging, fitted weights, the saved manifest, class-list checks."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import CHARS, fixed_logits, save_run, table_with_ranks
from kanjirec.cli import main
from kanjirec.ensemble import EnsembleModel, build_ensemble, check_same_classes, fit_weights, load_ensemble
from kanjirec.errors import KanjirecError
from kanjirec.evaluate import evaluate


@pytest.mark.usefixtures("fixed_logits_registered")
def test_ensemble_of_known_logits_gives_the_weighted_average_of_probabilities():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 10, 4)).astype(np.float32) * 3
    ensemble = EnsembleModel([fixed_logits(a), fixed_logits(b)], [0.25, 0.75], list("abcd"))
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 1] = torch.arange(10)  # the stub reads the sample id from this pixel
    probs = torch.softmax(ensemble(images), dim=1).detach().numpy()
    expected = (
        0.25 * torch.softmax(torch.tensor(a), 1).numpy() + 0.75 * torch.softmax(torch.tensor(b), 1).numpy()
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
    report = build_ensemble(runs, id_dataset.path, tmp_path / "ens.json", latency_runs=3)
    fitted = report["weights"]["fitted"]
    assert fitted["good"] > fitted["poor"]
    assert report["best_single"] == "good"
    acc = report["accuracy"]
    assert report["gain_top1"] == pytest.approx(acc["ensemble-fitted"]["top1"] - acc["good"]["top1"])
    assert set(report["latency_ms"]) == {"good", "ensemble-fitted"} and report["latency_ratio"] > 0
    assert set(acc) == {"good", "poor", "ensemble-mean", "ensemble-fitted"}


def test_saved_ensemble_reloads_and_evaluates_identically(id_dataset, runs, tmp_path):
    manifest = tmp_path / "ens.json"
    report = build_ensemble(runs, id_dataset.path, manifest, latency_runs=3)
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
