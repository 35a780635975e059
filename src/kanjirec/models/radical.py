"""The two radical (component) models, supervised by KanjiVG decompositions (``decompose.py``).

``radical_attn_rnn`` (seed section 2, ``train_radical_rnn.py``): a CNN encoder turns the
image into an 8x8 grid of slots; a component detector gives each slot logits over the
component vocabulary (multi-label: a slot can hold 言 and the 口 inside it); each slot's
component embedding is ``softmax(scale * [logits, nothing]) @ code matrix`` (encoding
``one_hot``, ``binary_tree`` or ``learned``, then a linear projection for the fixed codes;
"nothing" is an extra detector output with its own learned embedding); a BiLSTM with
additive attention reads the 64 slots in reading order; a linear head gives the class. The
component loss is binary cross-entropy between the max over slots of the detector's logits
and the class's multi-hot decomposition (multiple-instance learning: a component must fire
somewhere). ``predict_components`` and ``score_by_decomposition`` use that detector to score
any character whose KanjiVG decomposition is known, classes or not (zero-shot).

Note on encodings: because the embedding is a soft mixture followed by a learned linear map,
``one_hot`` + projection and ``learned`` are the same function class (only initialisation and
a bias differ); ``binary_tree`` is a real bottleneck (11 dimensions for ETL9G's 1,084 components).

``radical_rnn`` (seed section 3c): the detector reads the pooled image and predicts an ordered
component sequence of up to ``max_components`` slots, each a softmax over the vocabulary plus
an "end" symbol, supervised by the class's components in KanjiVG tree order. Slot embeddings
are ``probabilities @ embedding`` (dimension 128); the soft mask ``1 - p(end)`` drives a masked
mean over the BiLSTM outputs, so padding is learned and differentiable. There are as many slots
as the longest decomposition of the classes (15 for ETL9G) unless ``max_components`` says more.

Both need ``classes=`` (the class characters) at construction. The vocabulary is every component
of the classes' decompositions (1,084 for ETL9G, see ``decompose.py``), so every class is
supervised by its whole decomposition. They keep the decompositions as a buffer of component
indices (a (C, V) multi-hot would be 13 MB for ETL9G, more than the weights) and the vocabulary
as code points, so a checkpoint carries them. Neither feeds an argmax or top-k index into
an embedding: the path from pixels to class is differentiable end to end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kanjirec.decompose import ENCODINGS, ComponentTable, multi_hot, pack_strings, unpack_strings
from kanjirec.models import register_model
from kanjirec.models.base import RecognitionModel, bilstm, conv_bn_relu


def _encoder(channels: Sequence[int]) -> nn.Sequential:
    """Two Conv-BN-ReLU per stage, 2x2 max-pool after each: 64x64 -> 8x8 with three stages."""
    layers: list[nn.Module] = []
    in_ch = 1
    for out_ch in channels:
        layers += [conv_bn_relu(in_ch, out_ch), conv_bn_relu(out_ch, out_ch), nn.MaxPool2d(2)]
        in_ch = out_ch
    return nn.Sequential(*layers)


def decomposition_log_likelihood(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, K) mean Bernoulli log-likelihood of K multi-hot decompositions (K, V) under (B, V)
    predicted component probabilities; higher is a better match."""
    probs = probs.clamp(1e-6, 1 - 1e-6)
    log_p, log_not_p = probs.log(), (1 - probs).log()
    return (log_p @ targets.T + log_not_p @ (1 - targets).T) / targets.shape[1]


class _ComponentModel(RecognitionModel):
    """Holds the component table as buffers and implements zero-shot scoring."""

    def _init_table(self, classes: Sequence[str] | None, width: int | None = None) -> ComponentTable:
        """Register the decompositions, padded with -1 to ``width`` indices (default: the longest)."""
        if classes is None:
            raise ValueError(
                f"model {self.name!r} needs classes= (the class characters) to look up their "
                "KanjiVG decompositions"
            )
        table = ComponentTable.build(classes)
        longest = table.sequences.shape[1]
        width = longest if width is None else width
        if width < longest:
            char = table.classes[int(table.lengths.argmax())]
            raise ValueError(
                f"max_components={width} is shorter than the {longest} components of {char!r}; "
                "raise it or leave it unset (the longest decomposition of the classes)"
            )
        sequences = torch.full((len(table.classes), width), -1, dtype=torch.int64)
        sequences[:, :longest] = torch.from_numpy(table.sequences)
        self.register_buffer("component_sequences", sequences)
        # The vocabulary as code points, so a checkpoint names its components without KanjiVG.
        self.register_buffer("vocabulary_codepoints", torch.from_numpy(pack_strings(table.vocabulary)))
        self.classes = tuple(classes)
        return table

    @property
    def vocabulary(self) -> list[str]:
        return unpack_strings(self.vocabulary_codepoints.cpu().numpy())

    def component_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, V) multi-hot decompositions of the classes ``labels``."""
        sequences = self.component_sequences[labels]
        v = self.vocabulary_codepoints.shape[0]
        out = torch.zeros(len(sequences), v + 1, device=sequences.device)
        out.scatter_(1, torch.where(sequences < 0, v, sequences), 1.0)  # padding lands in column v
        return out[:, :v]

    def predict_components(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V) probability that each vocabulary component is present in each image."""
        raise NotImplementedError

    def decomposition_targets(self, chars: Sequence[str]) -> torch.Tensor:
        """(K, V) multi-hot KanjiVG decompositions of any characters, classes or not, over this
        model's vocabulary (a class's row equals its training target)."""
        return torch.from_numpy(multi_hot(chars, self.vocabulary)).to(self.component_sequences.device)

    def score_by_decomposition(self, images: torch.Tensor, candidate_chars: Sequence[str]) -> torch.Tensor:
        """(B, K) mean Bernoulli log-likelihood of each candidate's decomposition under the
        predicted component probabilities; higher is a better match. Works for characters the
        model never saw, as long as KanjiVG decomposes them into known components."""
        return decomposition_log_likelihood(
            self.predict_components(images), self.decomposition_targets(candidate_chars)
        )


@register_model("radical_attn_rnn")
class RadicalAttentionRNN(_ComponentModel):
    """Image -> 8x8 slots -> component probabilities -> component embeddings -> BiLSTM + attention."""

    def __init__(
        self,
        num_classes: int,
        classes: Sequence[str] | None = None,
        *,
        encoding: str = "learned",
        embed_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 2,
        channels: Sequence[int] = (32, 64, 128),
        component_weight: float = 0.3,
        mixture_scale: float = 5.0,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes)
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown component encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
        table = self._init_table(classes)
        v = len(table.vocabulary)
        self.component_weight = component_weight
        self.encoder = _encoder(channels)
        self.detector = nn.Linear(channels[-1], v)
        # Start from a small prior (components are rare per slot), as in focal-loss detectors.
        nn.init.constant_(self.detector.bias, -2.0)
        # The embedding mixes components with a softmax over the vocabulary plus a "nothing" entry.
        # Sigmoid weights would not work: the multi-label BCE (~5 positives of 1,084) pushes every logit
        # down, the sigmoids saturate near 0, the mixture becomes constant and the class gradient
        # vanishes (training stayed at chance). A softmax ignores that common shift; scaling its logits
        # (a temperature of 1 / mixture_scale) keeps slots distinct while the detector is still unsure,
        # at scale 1 the mixture stays near-uniform and the class loss did not move in 150 steps.
        self.mixture_scale = mixture_scale
        self.nothing_detector = nn.Linear(channels[-1], 1)
        # "Nothing" starts at the components' prior too. With torch's default bias (~0) it led every
        # slot's softmax by 2 x mixture_scale = 10 logits (weight 0.997 on a zero embedding): every image
        # gave the LSTM the same input, the class gradient into the detector vanished, and the slots
        # were still all "nothing" after 6 epochs (val top-1 at chance; docs/results/diagnosis.md).
        nn.init.constant_(self.nothing_detector.bias, -2.0)
        self.nothing_embedding = nn.Parameter(torch.zeros(embed_dim))
        codes = table.encoding(encoding)
        if codes is None:
            self.embedding = nn.Parameter(torch.randn(v, embed_dim) * embed_dim**-0.5)
            self.projection = nn.Identity()
        else:
            self.register_buffer("codes", torch.from_numpy(codes))
            self.projection = nn.Linear(codes.shape[1], embed_dim)
        # A mixture of few confident components has a small norm; normalising keeps the LSTM's input
        # scale independent of how many components a slot holds.
        self.embedding_norm = nn.LayerNorm(embed_dim)
        self.lstm = bilstm(embed_dim, hidden_size, num_layers, dropout)
        self.attention_score = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1)
        )
        # The attention-pooled LSTM output is small (logits ~0.06 at init): batch-normalised, the
        # classifier separates classes from the first steps (docs/results/learning/).
        self.pooled_norm = nn.BatchNorm1d(2 * hidden_size)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, num_classes))

    def _slot_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, V) component logits and (B, S, 1) "nothing" logits of the 8x8 slots."""
        slots = self.encoder(images).flatten(2).transpose(1, 2)  # (B, S, C), reading order
        return self.detector(slots), self.nothing_detector(slots)

    def _component_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._slot_logits(images)[0]

    def slot_embeddings(self, component_logits: torch.Tensor, nothing_logits: torch.Tensor) -> torch.Tensor:
        """(B, S, embed_dim): each slot's softmax mixture of component codes (projected) and "nothing"."""
        slot_logits = torch.cat([component_logits, nothing_logits], dim=2) * self.mixture_scale
        weights = torch.softmax(slot_logits, dim=2)
        codes = self.embedding if isinstance(self.projection, nn.Identity) else self.codes
        return self.projection(weights[:, :, :-1] @ codes) + weights[:, :, -1:] * self.nothing_embedding

    def _classify(self, component_logits: torch.Tensor, nothing_logits: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(self.embedding_norm(self.slot_embeddings(component_logits, nothing_logits)))
        weights = torch.softmax(self.attention_score(x), dim=1)  # (B, S, 1)
        return self.head(self.pooled_norm((weights * x).sum(dim=1)))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._classify(*self._slot_logits(images))

    def predict_components(self, images: torch.Tensor) -> torch.Tensor:
        (x,) = self.extract_features(images)
        return torch.sigmoid(self._component_logits(x).amax(dim=1))

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        (x,) = self.extract_features(images)
        component_logits, nothing_logits = self._slot_logits(x)
        logits = self._classify(component_logits, nothing_logits)
        class_loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        component_loss = F.binary_cross_entropy_with_logits(
            component_logits.amax(dim=1), self.component_targets(labels)
        )
        loss = class_loss + self.component_weight * component_loss
        return loss, logits, {"class_loss": class_loss.item(), "component_loss": component_loss.item()}


@register_model("radical_rnn")
class RadicalSequenceRNN(_ComponentModel):
    """Image -> ordered component slots (softmax over vocabulary + end) -> embeddings ->
    BiLSTM -> masked mean pooling -> head."""

    def __init__(
        self,
        num_classes: int,
        classes: Sequence[str] | None = None,
        *,
        max_components: int | None = None,
        embed_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        detector_hidden: int = 256,
        component_weight: float = 1.0,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_classes)
        table = self._init_table(classes, max_components)
        v, slots = len(table.vocabulary), self.component_sequences.shape[1]
        self.component_weight = component_weight
        self.encoder = nn.Sequential(_encoder(channels), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.image_to_slots = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(channels[-1] * 16, detector_hidden), nn.ReLU(inplace=True)
        )
        self.slot_queries = nn.Parameter(torch.randn(slots, detector_hidden) * 0.02)
        self.slot_classifier = nn.Linear(detector_hidden, v + 1)  # index v: no further component
        self.embedding = nn.Parameter(torch.randn(v, embed_dim) * embed_dim**-0.5)
        self.embedding_norm = nn.LayerNorm(embed_dim)
        self.lstm = bilstm(embed_dim, hidden_size, num_layers, dropout)
        self.pooled_norm = nn.BatchNorm1d(2 * hidden_size)  # as in radical_attn_rnn
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, num_classes))

    def _slot_logits(self, images: torch.Tensor) -> torch.Tensor:
        image = self.image_to_slots(self.encoder(images))  # (B, H)
        return self.slot_classifier(F.relu(image[:, None, :] + self.slot_queries))  # (B, L, V+1)

    def _classify(self, slot_logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(slot_logits, dim=2)
        present = 1.0 - probs[:, :, -1:]  # soft mask (B, L, 1)
        x, _ = self.lstm(self.embedding_norm(probs[:, :, :-1] @ self.embedding))
        pooled = (x * present).sum(dim=1) / (present.sum(dim=1) + 1e-6)
        return self.head(self.pooled_norm(pooled))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._classify(self._slot_logits(images))

    def predict_components(self, images: torch.Tensor) -> torch.Tensor:
        """P(component appears in at least one slot), slots taken as independent."""
        (x,) = self.extract_features(images)
        probs = torch.softmax(self._slot_logits(x), dim=2)[:, :, :-1]
        return 1.0 - torch.prod(1.0 - probs, dim=1)

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        (x,) = self.extract_features(images)
        slot_logits = self._slot_logits(x)
        logits = self._classify(slot_logits)
        class_loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        sequence = self.component_sequences[labels]
        end = slot_logits.shape[2] - 1
        sequence = torch.where(sequence < 0, torch.full_like(sequence, end), sequence)
        component_loss = F.cross_entropy(slot_logits.flatten(0, 1), sequence.flatten())
        loss = class_loss + self.component_weight * component_loss
        return loss, logits, {"class_loss": class_loss.item(), "component_loss": component_loss.item()}
