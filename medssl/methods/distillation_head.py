"""The DINO/iBOT projection head: an MLP, L2 normalisation, cosine logits against unit prototypes.

Paper: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO,
the weight-normalised last layer with its norm fixed at 1), shared by the global and patch
tokens as in Zhou et al. 2022 (iBOT).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medssl.methods.projectors import MLPProjector


class DistillationHead(nn.Module):
    """MLP, L2 normalisation, then cosine logits against ``num_prototypes`` unit prototypes.

    The prototypes are the rows of ``last.weight``, normalised in every forward pass (DINO's
    weight-normalised last layer with its norm fixed at 1): logits are cosines, so their spread
    does not shrink with the width as a plain linear layer's initial weights do.
    """

    def __init__(self, in_dim, hidden_dim, projection_dim, num_prototypes, layers, norm) -> None:
        super().__init__()
        self.mlp = MLPProjector(in_dim, hidden_dim, projection_dim, layers, norm)
        self.last = nn.Linear(projection_dim, num_prototypes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.last.weight, dim=1))
