"""FiLM: feature-wise linear modulation of a feature map by a conditioning vector (Perez et al. 2018).

RT-1 form (robotics_transformer ``FilmConditioning``): ``x * (1 + gamma(c)) + beta(c)`` with ``gamma``
and ``beta`` linear projections of the conditioning vector whose weights and biases start at zero, so
the layer is exactly the identity at initialisation and a pretrained backbone is undisturbed.
"""

from __future__ import annotations

from torch import Tensor, nn


class FiLM(nn.Module):
    """Modulate channels of ``x`` by a per-sample conditioning vector.

    Args:
        cond_dim: E, size of the conditioning vector.
        num_channels: C, channels of the modulated features.
    """

    def __init__(self, cond_dim: int, num_channels: int):
        super().__init__()
        self.to_gamma = nn.Linear(cond_dim, num_channels)
        self.to_beta = nn.Linear(cond_dim, num_channels)
        for layer in (self.to_gamma, self.to_beta):  # identity at init
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x: [B, C, *spatial] (channels first), cond: [B, E] -> [B, C, *spatial]."""
        if cond.shape[0] != x.shape[0] or x.shape[1] != self.to_gamma.out_features:
            raise ValueError(f"FiLM: features {tuple(x.shape)} need [B, {self.to_gamma.out_features}, ...] and "
                             f"conditioning [B, {self.to_gamma.in_features}]; got conditioning {tuple(cond.shape)}")
        extra = (1,) * (x.dim() - 2)
        gamma = self.to_gamma(cond).view(*cond.shape[:1], -1, *extra)  # [B, C, 1, 1]
        beta = self.to_beta(cond).view(*cond.shape[:1], -1, *extra)
        return x * (1 + gamma) + beta
