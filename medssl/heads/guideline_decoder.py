"""Guideline-query decoder: guideline sentences as queries over an encoder's last feature map.

Paper: Li et al. 2025, "RAD: Towards Trustworthy Retrieval-Augmented Multi-modal Clinical
Diagnosis" (guideline knowledge as decoder queries; the prediction comes with evidence).

Shapes (S = number of spatial dims, 2 or 3; T = prod(spatial) image tokens; N sentences)::

    feature_map [B, C, *spatial] -> tokens [B, T, E] (1x1 projection + LayerNorm) plus a
        Fourier positional encoding of the normalised voxel coordinates (any grid size), so
        keys and values both carry content and place
    guideline embeddings [N, text_dim] (a buffer) -> queries [N, E], shared by the batch
    num_layers x (cross-attention queries->tokens, residual, LayerNorm, FFN, residual, LayerNorm)
    sentence_scores [B, N] = match + Linear(E, 1) of the updated query, where match is the
        last layer's mean over heads of logsumexp over tokens of the attention logits
        - log T (high where a token fits the sentence; the attention map shows that token)
    evidence logit of class c = logsumexp over c's sentences of the scores - log(n_c)
        (a smooth max that does not grow with the number of sentences)
    linear logit = Linear(E, C) of the mean image token
    logits [B, C] = evidence logits + linear logits (a sum: the linear path learns what
        guideline text cannot express; either path alone can decide)

Outputs also carry ``image_embedding [B, E]`` (unit mean image token after a projection) and
``guideline_embedding [N, E]`` (unit projected sentences), the two inputs of
:func:`medssl.losses.guideline.guideline_contrastive_loss`, and ``attention [B, N, *spatial]``
(last layer, averaged over heads; sums to 1 over space).

For ``build_head("classification", spec, ...)``: the spec is the constructor's keyword
arguments (:meth:`GuidelineDecoder.spec`, primitives only: feature_dim, num_classes,
text_dim, embed_dim, num_heads, num_layers, multi_label, spatial_dims, dropout). The
guideline embeddings are buffers (``guideline_text_embedding [N, text_dim]``,
``sentence_class [N]``), so a state dict restores them with no text model; loading resizes
them to the stored N.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BUFFERS = ("guideline_text_embedding", "sentence_class")


def grid_coordinates(spatial: tuple[int, ...], device: torch.device) -> Tensor:
    """Voxel centres normalised to [-1, 1] per axis: ``[prod(spatial), S]`` (row-major order)."""
    axes = [
        torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device)
        for n in spatial
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial))


class FourierPositions(nn.Module):
    """``[T, S]`` coordinates -> ``[T, E]``: sin/cos at octave frequencies, then a linear map."""

    def __init__(self, spatial_dims: int, embed_dim: int, num_frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(num_frequencies).float(), persistent=False
        )
        self.proj = nn.Linear(2 * num_frequencies * spatial_dims, embed_dim)

    def forward(self, coords: Tensor) -> Tensor:
        angles = (coords[..., None] * self.frequencies).flatten(-2)
        return self.proj(torch.cat((angles.sin(), angles.cos()), dim=-1))


class QueryLayer(nn.Module):
    """Multi-head cross-attention of queries over image tokens, then a feed-forward block.

    Besides the updated queries it returns the attention weights (mean over heads) and each
    query's match score, ``mean over heads of logsumexp_t(q.k_t / sqrt(d)) - log T``: high
    exactly when some image token matches the query, and the tokens that match are the ones
    the attention weights point at, so the evidence and its map agree by construction.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(embed_dim, embed_dim)
        self.k = nn.Linear(embed_dim, embed_dim)
        self.v = nn.Linear(embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(4 * embed_dim, embed_dim),
        )
        self.norm2 = nn.LayerNorm(embed_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, e = x.shape
        return x.reshape(b, n, self.num_heads, e // self.num_heads).transpose(1, 2)

    def forward(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, N, E]``, ``[B, T, E]`` -> queries ``[B, N, E]``, weights ``[B, N, T]``,
        match ``[B, N]``."""
        q, k, v = self._heads(self.q(queries)), self._heads(self.k(keys)), self._heads(self.v(keys))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, h, N, T]
        weights = logits.softmax(dim=-1)
        attended = (self.dropout(weights) @ v).transpose(1, 2).flatten(2)
        match = (torch.logsumexp(logits, dim=-1) - math.log(keys.shape[1])).mean(dim=1)
        queries = self.norm1(queries + self.out(attended))
        return self.norm2(queries + self.ffn(queries)), weights.mean(dim=1), match


class GuidelineDecoder(nn.Module):
    """Diagnosis head whose queries are guideline sentences (module docstring).

    Args:
        feature_dim: channels C of the encoder's last feature map.
        num_classes: diagnosis classes.
        text_dim: dimension of the guideline sentence embeddings (384 for MiniLM).
        embed_dim: decoder width E (divisible by num_heads).
        num_heads: attention heads.
        num_layers: query layers.
        multi_label: classes are independent (sigmoid) rather than exclusive (softmax);
            changes only how :meth:`evidence` picks predicted classes.
        spatial_dims: 2 or 3, the dims of the feature map.
        dropout: in attention and feed-forward blocks.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        text_dim: int,
        embed_dim: int = 256,
        num_heads: int = 4,
        num_layers: int = 1,
        multi_label: bool = False,
        spatial_dims: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("num_classes", num_classes),
                            ("text_dim", text_dim), ("embed_dim", embed_dim),
                            ("num_heads", num_heads), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self._spec: dict[str, Any] = {
            "feature_dim": feature_dim, "num_classes": num_classes, "text_dim": text_dim,
            "embed_dim": embed_dim, "num_heads": num_heads, "num_layers": num_layers,
            "multi_label": bool(multi_label), "spatial_dims": spatial_dims,
            "dropout": float(dropout),
        }
        self.num_classes = num_classes
        self.multi_label = bool(multi_label)
        self.spatial_dims = spatial_dims
        self.token_proj = nn.Linear(feature_dim, embed_dim)
        self.token_norm = nn.LayerNorm(embed_dim)
        self.positions = FourierPositions(spatial_dims, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.layers = nn.ModuleList(
            QueryLayer(embed_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.score = nn.Linear(embed_dim, 1)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.image_proj = nn.Linear(embed_dim, embed_dim)
        self.register_buffer("guideline_text_embedding", torch.zeros(0, text_dim))
        self.register_buffer("sentence_class", torch.zeros(0, dtype=torch.long))

    def spec(self) -> dict[str, Any]:
        """Constructor keyword arguments (primitives) that rebuild this head."""
        return dict(self._spec)

    @property
    def num_sentences(self) -> int:
        return int(self.sentence_class.shape[0])

    def set_guidelines(self, embeddings: Tensor, sentence_class: Tensor) -> None:
        """Install the guideline sentence embeddings ``[N, text_dim]`` and their classes ``[N]``.

        Every class needs at least one sentence.
        """
        text_dim = self._spec["text_dim"]
        if embeddings.ndim != 2 or embeddings.shape[1] != text_dim or embeddings.shape[0] < 1:
            raise ValueError(
                f"guideline embeddings must be [N, {text_dim}] with N >= 1, got "
                f"{tuple(embeddings.shape)}"
            )
        sentence_class = torch.as_tensor(sentence_class)
        if sentence_class.shape != (embeddings.shape[0],) or sentence_class.dtype.is_floating_point:
            raise ValueError(
                f"sentence_class must be integer [N] = [{embeddings.shape[0]}], got "
                f"{tuple(sentence_class.shape)} {sentence_class.dtype}"
            )
        if int(sentence_class.min()) < 0 or int(sentence_class.max()) >= self.num_classes:
            raise ValueError(
                f"sentence_class must lie in [0, {self.num_classes}), got "
                f"{int(sentence_class.min())}..{int(sentence_class.max())}"
            )
        counts = torch.bincount(sentence_class.long(), minlength=self.num_classes)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"classes {missing} have no guideline sentence")
        device = self.text_proj.weight.device
        self.guideline_text_embedding = embeddings.detach().float().to(device).clone()
        self.sentence_class = sentence_class.detach().long().to(device).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the number of sentences is data, not architecture: take the stored size
        for name in _BUFFERS:
            stored = state_dict.get(prefix + name)
            if stored is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(stored, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def guideline_queries(self) -> Tensor:
        """Projected guideline sentences ``[N, E]`` (the decoder's initial queries)."""
        if self.num_sentences == 0:
            raise ValueError("GuidelineDecoder has no guidelines: call set_guidelines first")
        return self.text_proj(self.guideline_text_embedding)

    def class_membership(self) -> Tensor:
        """``[C, N]`` bool: sentence n belongs to class c."""
        classes = torch.arange(self.num_classes, device=self.sentence_class.device)
        return classes[:, None] == self.sentence_class[None, :]

    def forward(self, feature_map: Tensor) -> dict[str, Tensor]:
        """``[B, C, *spatial]`` -> logits, image_embedding, guideline_embedding,
        sentence_scores, attention (module docstring)."""
        expected = 2 + self.spatial_dims
        if feature_map.ndim != expected or feature_map.shape[1] != self._spec["feature_dim"]:
            raise ValueError(
                f"feature_map must be [B, {self._spec['feature_dim']}, *spatial] with "
                f"{self.spatial_dims} spatial dims, got {tuple(feature_map.shape)}"
            )
        queries0 = self.guideline_queries()
        batch, spatial = feature_map.shape[0], tuple(feature_map.shape[2:])
        tokens = self.token_norm(self.token_proj(feature_map.flatten(2).transpose(1, 2)))
        keys = tokens + self.positions(grid_coordinates(spatial, feature_map.device))
        queries = queries0.unsqueeze(0).expand(batch, -1, -1)
        for layer in self.layers:
            queries, weights, match = layer(queries, keys)
        scores = match + self.score(queries).squeeze(-1)
        membership = self.class_membership()
        masked = scores.unsqueeze(1).masked_fill(~membership, float("-inf"))
        evidence_logits = torch.logsumexp(masked, dim=-1) - membership.sum(1).float().log()
        pooled = tokens.mean(dim=1)
        return {
            "logits": evidence_logits + self.classifier(pooled),
            "image_embedding": F.normalize(self.image_proj(pooled), dim=-1),
            "guideline_embedding": F.normalize(queries0, dim=-1),
            "sentence_scores": scores,
            "attention": weights.reshape(batch, queries0.shape[0], *spatial),
        }

    def evidence(self, outputs: dict[str, Tensor], top_k: int = 3) -> list[dict[int, list[int]]]:
        """Per image: ``{predicted class: indices of its top_k highest-scoring sentences}``.

        Single-label: the argmax class. Multi-label: every class with sigmoid > 0.5 (the
        argmax class when none is). Indices point into the installed sentences (the
        guideline set's ``texts``), best first.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        logits, scores = outputs["logits"].detach(), outputs["sentence_scores"].detach()
        membership = self.class_membership().to(scores.device)
        result: list[dict[int, list[int]]] = []
        for i in range(logits.shape[0]):
            if self.multi_label:
                predicted = torch.nonzero(logits[i].sigmoid() > 0.5).flatten().tolist()
                predicted = predicted or [int(logits[i].argmax())]
            else:
                predicted = [int(logits[i].argmax())]
            per_class = {}
            for c in predicted:
                members = torch.nonzero(membership[c]).flatten()
                order = scores[i, members].argsort(descending=True)[:top_k]
                per_class[c] = members[order].tolist()
            result.append(per_class)
        return result
