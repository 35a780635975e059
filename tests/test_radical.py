"""The radical models: component targets, the encodings they feed, predicted components, zero-shot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import SMALL, shifted_renders
from kanjirec.decompose import ComponentTable, decompose
from kanjirec.models import create_model

RADICAL_MODELS = ["radical_attn_rnn", "radical_rnn"]
CLASSES = list("明林語川")
# Enough Adam steps for both models to get every component of the 8 images right (about 40-60 needed).
STEPS = 80


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 samples, 4 classes: two shifted renders of each."""
    return shifted_renders(CLASSES)


def build(name: str, classes: list[str] = CLASSES, **extra) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, len(classes), classes=classes, **{**SMALL[name], "dropout": 0.0, **extra})


def components_of(model, row: torch.Tensor) -> set[str]:
    return {model.vocabulary[i] for i in torch.nonzero(row).flatten().tolist()}


@pytest.mark.parametrize("name", RADICAL_MODELS)
def test_targets_are_whole_decompositions(name: str) -> None:
    model = build(name)
    targets = model.component_targets(torch.arange(len(CLASSES)))
    for row, char in zip(targets, CLASSES, strict=True):
        assert components_of(model, row) == set(decompose(char))
    assert components_of(model, targets[CLASSES.index("語")]) == {"言", "口", "吾", "五", "二"}


def test_sequence_model_has_a_slot_for_every_component_of_the_longest_class() -> None:
    model = build("radical_rnn")
    assert model.slot_queries.shape[0] == 6  # 語: 言 口 吾 五 二 口
    assert build("radical_rnn", max_components=8).slot_queries.shape[0] == 8
    with pytest.raises(ValueError, match="max_components=4 is shorter than the 6 components of '語'"):
        build("radical_rnn", max_components=4)


@pytest.mark.parametrize("name", RADICAL_MODELS)
def test_losses_report_the_component_term(name: str, batch) -> None:
    images, labels = batch
    model = build(name)
    loss, _, extras = model.training_loss(images, labels)
    assert set(extras) == {"class_loss", "component_loss"}
    expected = extras["class_loss"] + model.component_weight * extras["component_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("encoding", ["one_hot", "binary_tree"])
def test_a_confident_slot_embeds_its_components_code(encoding: str) -> None:
    model = build("radical_attn_rnn", encoding=encoding).eval()
    expected_codes = torch.from_numpy(ComponentTable.build(CLASSES).encoding(encoding))
    v = len(model.vocabulary)
    # One slot per component, each sure of its component and sure it is not "nothing".
    component_logits = torch.full((1, v, v), -20.0)
    component_logits[0, torch.arange(v), torch.arange(v)] = 20.0
    nothing_logits = torch.full((1, v, 1), -20.0)
    with torch.no_grad():
        embedded = model.slot_embeddings(component_logits, nothing_logits)[0]
        expected = model.projection(expected_codes)
    torch.testing.assert_close(embedded, expected)
    # Distinct components stay distinct after the projection.
    assert torch.cdist(embedded, embedded).add(torch.eye(v)).min() > 1e-3


@pytest.mark.parametrize("name", RADICAL_MODELS)
def test_predict_components_after_brief_training(name: str, batch) -> None:
    torch.set_num_threads(1)
    images, labels = batch
    model = build(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        optimizer.zero_grad()
        model.training_loss(images, labels)[0].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        probs = model.predict_components(images)
    assert probs.shape == (8, len(model.vocabulary))
    for row, label in zip(probs, labels.tolist(), strict=True):
        assert components_of(model, row > 0.5) == set(decompose(CLASSES[label]))


def test_zero_shot_scoring_ranks_a_held_out_character_by_its_components(batch) -> None:
    images, _ = batch
    # 明 is not a class; its components 日 and 月 are in the vocabulary through the classes 日 and 月.
    classes = list("日月木口")
    model = build("radical_attn_rnn", classes=classes).eval()
    vocab = model.vocabulary
    with torch.no_grad():
        # Make the detector see 日 and 月 everywhere and nothing else.
        model.detector.weight.zero_()
        model.detector.bias.fill_(-6.0)
        model.detector.bias[[vocab.index("日"), vocab.index("月")]] = 6.0
        scores = model.score_by_decomposition(images[:2], ["林", "日", "明", "月", "口"])
    assert scores.argmax(dim=1).tolist() == [2, 2]
    # 林 (木, 木) contradicts both detections and ranks last.
    assert scores.argmin(dim=1).tolist() == [0, 0]
