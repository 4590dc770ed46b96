"""Dual guideline decoder: label queries and guideline-sentence queries over an encoder's last
feature map.

Paper: Li et al. 2025, "RAD: Towards Trustworthy Retrieval-Augmented Multi-modal Clinical
Diagnosis" (NeurIPS 2025): a dual transformer decoder, one decoder queried by the labels and
one by the guideline text, each giving class logits (reference: ``models/clip_tqn.py``
``TQN_Model_fusion`` twice, ``engine/train_rad.py``).

Shapes (S = number of spatial dims, 2 or 3; T = prod(spatial) image tokens; N sentences;
C classes)::

    feature_map [B, C_in, *spatial] -> tokens [B, T, E] (1x1 projection + LayerNorm) plus a
        Fourier positional encoding of the normalised voxel coordinates (any grid size), so
        keys and values both carry content and place
    label path: one learned query per class [C, E] -> num_layers x QueryLayer ->
        label_logits [B, C] = match + Linear(E, 1) of the updated query
    guideline path: guideline embeddings [N, text_dim] (a buffer) -> Linear, plus the
        label query of the sentence's class -> queries [N, E] -> its own num_layers x
        QueryLayer ->
        sentence_scores [B, N] = match + Linear(E, 1) of the updated query;
        guideline_logits of class c = logsumexp over c's sentences - log(n_c)
        (a smooth max that does not grow with the number of sentences)
    match = the last layer's mean over heads of logsumexp over tokens of the attention
        logits - log T (high where a token fits the query; the attention map shows that token)
    logits [B, C] = (label_logits + guideline_logits) / 2
        (+ bypass_logits = Linear(E, C) of the mean token, only with ``linear_bypass``;
        off by default, so every logit comes from a query that attended somewhere)

:meth:`GuidelineDecoder.path_shares` gives each path's share of each logit, for the evidence
report. Outputs also carry ``image_embedding [B, text_dim]`` (unit projection of the mean
token into the text space) and ``guideline_embedding [N, text_dim]`` (the unit guideline
embeddings themselves, fixed), the inputs of the guideline loss
(:mod:`medssl.losses.guideline`), and ``attention [B, N, *spatial]`` /
``label_attention [B, C, *spatial]`` (last layer, averaged over heads; sum to 1 over space).

For ``build_head("classification", spec, ...)``: the spec is the constructor's keyword
arguments (:meth:`GuidelineDecoder.spec`, primitives only: feature_dim, num_classes,
text_dim, embed_dim, num_heads, num_layers, multi_label, spatial_dims, dropout,
linear_bypass). The guideline embeddings are buffers (``guideline_text_embedding
[N, text_dim]``, ``sentence_class [N]``), so a state dict restores them with no text model;
loading resizes them to the stored N.
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
    """Diagnosis head with label queries and guideline-sentence queries (module docstring).

    Args:
        feature_dim: channels of the encoder's last feature map.
        num_classes: diagnosis classes.
        text_dim: dimension of the guideline sentence embeddings (384 for MiniLM).
        embed_dim: decoder width E (divisible by num_heads).
        num_heads: attention heads.
        num_layers: query layers of each path.
        multi_label: classes are independent (sigmoid) rather than exclusive (softmax);
            changes only how :meth:`evidence` picks predicted classes.
        spatial_dims: 2 or 3, the dims of the feature map.
        dropout: in attention and feed-forward blocks.
        linear_bypass: add a linear map of the mean token to the logits (a path no query
            explains; its share is reported by :meth:`path_shares`).
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
        linear_bypass: bool = False,
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
            "dropout": float(dropout), "linear_bypass": bool(linear_bypass),
        }
        self.num_classes = num_classes
        self.multi_label = bool(multi_label)
        self.spatial_dims = spatial_dims
        self.token_proj = nn.Linear(feature_dim, embed_dim)
        self.token_norm = nn.LayerNorm(embed_dim)
        self.positions = FourierPositions(spatial_dims, embed_dim)
        self.label_queries = nn.Parameter(torch.randn(num_classes, embed_dim) * embed_dim**-0.5)
        self.label_layers = nn.ModuleList(
            QueryLayer(embed_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.label_score = nn.Linear(embed_dim, 1)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.layers = nn.ModuleList(
            QueryLayer(embed_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.score = nn.Linear(embed_dim, 1)
        self.bypass = nn.Linear(embed_dim, num_classes) if linear_bypass else None
        self.image_proj = nn.Linear(embed_dim, text_dim)
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
        """The guideline path's initial queries ``[N, E]``: each projected sentence plus its
        class's label query (the anchor keeps sentence attention on the class's finding; with
        free sentence queries it drifted to fixed places on some seeds)."""
        if self.num_sentences == 0:
            raise ValueError("GuidelineDecoder has no guidelines: call set_guidelines first")
        return self.text_proj(self.guideline_text_embedding) + self.label_queries[self.sentence_class]

    def class_membership(self) -> Tensor:
        """``[C, N]`` bool: sentence n belongs to class c."""
        classes = torch.arange(self.num_classes, device=self.sentence_class.device)
        return classes[:, None] == self.sentence_class[None, :]

    @staticmethod
    def _decode(layers: nn.ModuleList, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[Q, E]`` shared queries over ``[B, T, E]`` keys -> queries ``[B, Q, E]``,
        last weights ``[B, Q, T]``, last match ``[B, Q]``."""
        queries = queries.unsqueeze(0).expand(keys.shape[0], -1, -1)
        for layer in layers:
            queries, weights, match = layer(queries, keys)
        return queries, weights, match

    def forward(self, feature_map: Tensor) -> dict[str, Tensor]:
        """``[B, C_in, *spatial]`` -> logits, label_logits, guideline_logits (bypass_logits),
        image_embedding, guideline_embedding, sentence_scores, attention, label_attention
        (module docstring)."""
        expected = 2 + self.spatial_dims
        if feature_map.ndim != expected or feature_map.shape[1] != self._spec["feature_dim"]:
            raise ValueError(
                f"feature_map must be [B, {self._spec['feature_dim']}, *spatial] with "
                f"{self.spatial_dims} spatial dims, got {tuple(feature_map.shape)}"
            )
        sentences = self.guideline_queries()
        batch, spatial = feature_map.shape[0], tuple(feature_map.shape[2:])
        tokens = self.token_norm(self.token_proj(feature_map.flatten(2).transpose(1, 2)))
        keys = tokens + self.positions(grid_coordinates(spatial, feature_map.device))

        label_q, label_weights, label_match = self._decode(self.label_layers, self.label_queries, keys)
        label_logits = label_match + self.label_score(label_q).squeeze(-1)

        guide_q, weights, match = self._decode(self.layers, sentences, keys)
        scores = match + self.score(guide_q).squeeze(-1)
        membership = self.class_membership()
        masked = scores.unsqueeze(1).masked_fill(~membership, float("-inf"))
        guideline_logits = torch.logsumexp(masked, dim=-1) - membership.sum(1).float().log()

        pooled = tokens.mean(dim=1)
        out = {
            "logits": (label_logits + guideline_logits) / 2,
            "label_logits": label_logits,
            "guideline_logits": guideline_logits,
            "image_embedding": F.normalize(self.image_proj(pooled), dim=-1),
            "guideline_embedding": F.normalize(self.guideline_text_embedding, dim=-1),
            "sentence_scores": scores,
            "attention": weights.reshape(batch, sentences.shape[0], *spatial),
            "label_attention": label_weights.reshape(batch, self.num_classes, *spatial),
        }
        if self.bypass is not None:
            out["bypass_logits"] = self.bypass(pooled)
            out["logits"] = out["logits"] + out["bypass_logits"]
        return out

    @staticmethod
    def path_shares(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each path's share of each logit, ``{"label_queries", "guideline_queries"[,
        "linear_bypass"]: [B, C]}``: ``|contribution| / sum of |contributions|`` (the decoder
        paths contribute half their logit each), summing to 1 per class; equal shares where
        every contribution is 0."""
        parts = {
            "label_queries": outputs["label_logits"].detach() / 2,
            "guideline_queries": outputs["guideline_logits"].detach() / 2,
        }
        if "bypass_logits" in outputs:
            parts["linear_bypass"] = outputs["bypass_logits"].detach()
        size = torch.stack([p.abs() for p in parts.values()])  # [P, B, C]
        total = size.sum(dim=0, keepdim=True)
        shares = torch.where(total > 0, size / total.clamp_min(1e-30), 1.0 / len(parts))
        return dict(zip(parts, shares.unbind(0)))

    def evidence(self, outputs: dict[str, Tensor], top_k: int = 3) -> list[dict[int, list[int]]]:
        """Per image: ``{predicted class: indices of its top_k highest-scoring sentences}``.

        Single-label: the argmax class. Multi-label: every class with sigmoid > 0.5 (the
        argmax class when none is). Indices point into the installed sentences (the
        guideline set's ``texts``), best first. The sentences explain the guideline path;
        :meth:`path_shares` says how much of each logit that path carries.
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
