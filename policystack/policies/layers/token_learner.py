"""TokenLearner (Ryoo et al. 2021, v1.1 as in robotics_transformer ``TokenLearnerModule``).

Each of ``num_tokens`` output tokens is a softmax-weighted average over the N input tokens; the
weights come from a small MLP (LayerNorm -> Linear -> GELU -> Linear) applied per input token. RT-1 uses
it to squeeze the 9x9 = 81 feature-map tokens of a frame into 8.
"""

from __future__ import annotations

from torch import Tensor, nn


class TokenLearner(nn.Module):
    """Learn ``num_tokens`` spatial attention maps and pool the input with them.

    Args:
        dim: C, channels of each input token (kept in the output).
        num_tokens: S, output tokens.
        bottleneck_dim: hidden width of the MLP that scores the input tokens (RT-1: 64).
        dropout: dropout inside the MLP.
    """

    def __init__(self, dim: int, num_tokens: int = 8, bottleneck_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, bottleneck_dim), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
            nn.Linear(bottleneck_dim, num_tokens), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] feature map or [B, N, C] tokens -> [B, S, C]."""
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)  # [B, N=H*W, C]
        if x.dim() != 3:
            raise ValueError(f"TokenLearner expects [B, C, H, W] or [B, N, C], got shape {tuple(x.shape)}")
        weights = self.mlp(self.norm(x))  # [B, N, S]
        weights = weights.transpose(1, 2).softmax(dim=-1)  # [B, S, N]: a distribution over inputs
        return weights @ x  # [B, S, C]
