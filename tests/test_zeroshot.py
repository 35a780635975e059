"""Zero-shot: the class split of the protocol, what a vocabulary reaches, ranking unseen characters by
their decompositions, and `kanjirec zeroshot` end to end at a tiny scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import SIZE, encode_ids
from kanjirec.charset import jis1_kanji
from kanjirec.cli import main
from kanjirec.data.store import DatasetWriter
from kanjirec.decompose import multi_hot
from kanjirec.evaluation.zeroshot import (
    UNSCORABLE,
    DecompositionScorer,
    ZeroShotError,
    reachability,
    zero_shot_accuracy,
)
from kanjirec.zeroshot import ZeroShotSetupError, class_split


def test_class_split_takes_kanji_in_jis_order() -> None:
    split = class_split(500)
    kana = [c for c in split.seen if not "\u4e00" <= c <= "\u9fff"]
    kanji = [c for c in split.seen if "\u4e00" <= c <= "\u9fff"]
    assert len(kana) == 71 and "あ" in kana and "ア" not in kana  # ETL9G's hiragana
    # JIS order (亜 唖 娃 ...), not code-point order (一 丁 七 ...).
    assert kanji[:3] == ["亜", "唖", "娃"] and len(kanji) == 500
    assert len(split.unseen) == 1000 and split.unseen[-1] == "腕" and split.unseen[0] == jis1_kanji()[1965]
    assert not set(split.seen) & set(split.unseen)
    largest = class_split(1965)
    assert set(largest.seen) | set(largest.unseen) >= set(jis1_kanji())
    with pytest.raises(ZeroShotSetupError, match="between 1 and 1965"):
        class_split(1966)


def test_reachability_counts_full_partial_missing_and_coinciding_decompositions() -> None:
    r = reachability(list("明林語川"), ["日", "月", "木", "口"])
    assert r["fully_reachable"] == 0.5  # 明 (日 月), 林 (木 木)
    assert r["partly_reachable"] == 0.25  # 語: only its 口
    assert r["unreachable"] == 0.25 and r["unreachable_chars"] == "川"
    assert r["indistinguishable"] == 0.0
    # Over the vocabulary {月}, 明 (日 月) and 朋 (月 月) are the same decomposition.
    assert reachability(list("明朋"), ["月"])["indistinguishable"] == 1.0


class TableComponents(nn.Module):
    """A component model stub: predicts row ``id`` of a probability table for the image carrying ``id``."""

    name = "table_components"

    def __init__(self, vocabulary: list[str], table: np.ndarray) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.table = torch.from_numpy(table)

    def decomposition_targets(self, chars) -> torch.Tensor:
        return torch.from_numpy(multi_hot(chars, self.vocabulary))

    def predict_components(self, images: torch.Tensor) -> torch.Tensor:
        ids = images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()
        return self.table[ids]


VOCABULARY = ["日", "月", "木", "亻"]
CANDIDATES = list("明川朋林休")  # 川 has no component in the vocabulary


def component_probs(*present: str) -> list[float]:
    return [0.9 if x in present else 0.1 for x in VOCABULARY]


# (true character, the components the stub sees): the fourth sees only 月 of 明, so it reads 朋.
SAMPLES = [("明", "日月"), ("林", "木"), ("休", "亻木"), ("明", "月"), ("川", "日")]


@pytest.fixture()
def stub_and_data(tmp_path):
    table = np.array([component_probs(*seen) for _, seen in SAMPLES], np.float32)
    with DatasetWriter(tmp_path / "unseen", image_size=SIZE) as writer:
        writer.add(encode_ids(np.arange(len(SAMPLES))), [c for c, _ in SAMPLES], ["w"] * len(SAMPLES), "t")
        data = writer.finish(split="random")
    return TableComponents(VOCABULARY, table), data


def test_scorer_ranks_candidates_by_the_components_seen(stub_and_data) -> None:
    model, _ = stub_and_data
    images = torch.from_numpy(encode_ids(np.arange(len(SAMPLES))))[:, None]
    scores = DecompositionScorer(model, CANDIDATES)(images)
    assert [CANDIDATES[i] for i in scores.argmax(dim=1).tolist()] == ["明", "林", "休", "朋", "明"]
    others = [i for i, c in enumerate(CANDIDATES) if c != "川"]
    assert (scores[:, CANDIDATES.index("川")] == UNSCORABLE).all()  # no component known: ranks last
    assert (scores[:, others] > UNSCORABLE).all()


def test_zero_shot_accuracy_on_a_packed_dataset(stub_and_data) -> None:
    model, data = stub_and_data
    result = zero_shot_accuracy(model, data, CANDIDATES)
    assert result["samples"] == 5
    assert result["top1"] == pytest.approx(3 / 5)  # the second 明 reads 朋; 川 cannot be scored
    assert result["top5"] == 1.0  # 5 candidates
    assert result["fully_reachable_samples"] == 4
    assert result["distinct_top1"] == 4  # 明 林 休 朋
    assert result["fully_reachable_top1"] == pytest.approx(3 / 4)
    assert result["reachability"]["fully_reachable"] == pytest.approx(4 / 5)
    with pytest.raises(ZeroShotError, match="outside the candidates"):
        zero_shot_accuracy(model, data, CANDIDATES[:-1])


def test_a_model_without_components_is_refused() -> None:
    with pytest.raises(ZeroShotError, match="predicts no components"):
        DecompositionScorer(nn.Linear(2, 2), CANDIDATES)


TINY = ["--m", "2", "--unseen", "6", "--budget", "64", "--epochs", "1", "--test-writers", "1"]


def test_cli_trains_scores_and_evaluates_again(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CI", "1")
    torch.set_num_threads(1)
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["zeroshot", "--work", str(work), "--out", str(out), "--models", "radical_rnn", *TINY]
    assert main(args) == 0
    result = json.loads((out / "zeroshot.json").read_text(encoding="utf-8"))
    (row,) = result["rows"]
    assert (row["model"], row["m"], row["seen_classes"], row["samples_seen"]) == ("radical_rnn", 2, 73, 64)
    assert row["samples"] == 6 == result["protocol"]["test_samples"]
    assert result["protocol"]["scale"] == "CPU scale, 64 samples seen"
    assert (out / "zeroshot.md").read_text(encoding="utf-8").count("| radical_rnn | 2 |") == 1
    assert (out / "zeroshot.png").stat().st_size > 0

    again = tmp_path / "again"
    assert main([*args[:4], str(again), *args[5:], "--evaluate-only"]) == 0
    row_again = json.loads((again / "zeroshot.json").read_text(encoding="utf-8"))["rows"][0]
    assert (row_again["top1"], row_again["top5"]) == (row["top1"], row["top5"])

    capsys.readouterr()
    assert main([*args, "--evaluate-only", "--budget", "128"]) == 2  # the run saw 64 samples, not 128
    assert "trained on 64 samples, not the budget of 128" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "empty"), *args[3:], "--evaluate-only"]) == 2
    assert "no trained run at" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()  # nothing half-made
