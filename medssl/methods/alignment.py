"""The conditional alignment module of Alice: complete a masked crop from its matched positive.

Paper: Jiang et al. 2023, "Anatomical Invariance Modeling and Semantic Alignment for
Self-supervised Learning in 3D Medical Image Analysis" (Alice, the conditional anatomical
feature alignment module). Queries are the patch tokens of a masked crop ``[N, P, C]``; keys
and values are the tokens of its mined positive (same anatomy, another volume) ``[N, Q, C]``.
Cross-attention plus an MLP, each residual with pre-norm, gives completed tokens
``[N, P, C]`` that are trained towards the teacher's tokens of the unmasked crop, so the pair
must agree in content and in layout.
"""

from __future__ import annotations

from torch import Tensor, nn


class ConditionalAlignment(nn.Module):
    """``layers`` blocks of (cross-attention to the positive, MLP): ``[N, P, C], [N, Q, C] -> [N, P, C]``."""

    def __init__(
        self, dim: int, num_heads: int = 4, layers: int = 1, mlp_ratio: float = 2.0
    ) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads or layers < 1:
            raise ValueError(
                f"alignment needs dim divisible by num_heads and layers >= 1, got dim {dim}, "
                f"num_heads {num_heads}, layers {layers}"
            )
        hidden = max(1, int(dim * mlp_ratio))
        self.query_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.context_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(dim, num_heads, batch_first=True) for _ in range(layers)
        )
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
            )
            for _ in range(layers)
        )

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        if query.ndim != 3 or context.ndim != 3 or query.shape[::2] != context.shape[::2]:
            raise ValueError(
                f"query and context must be [N, P, C] and [N, Q, C], got {tuple(query.shape)} "
                f"and {tuple(context.shape)}"
            )
        x = query
        for q_norm, c_norm, attention, mlp in zip(
            self.query_norms, self.context_norms, self.attentions, self.mlps
        ):
            kv = c_norm(context)
            x = x + attention(q_norm(x), kv, kv, need_weights=False)[0]
            x = x + mlp(x)
        return x
