"""Trainable, instruction-conditioned layers on a pretrained feature map (the shared "head" of the
camera policies that use ``perception.image.PretrainedImageEncoder``).

RT-1 puts a FiLM layer after every block of its EfficientNet so the instruction shapes what the image
tokens contain. With a frozen pretrained trunk (whose features are computed once per dataset frame and
cached), the conditioning moves on top of it: ``FilmConvHead`` is a 1x1 convolution to ``width`` channels
and ``n_layers - 1`` 3x3 convolutions, each followed by FiLM from the instruction embedding (identity at
initialisation) and a ReLU:

    features [N, C, g, g] (frozen trunk) --1x1 conv, FiLM(cond), ReLU--> [N, width, g, g]
        --(3x3 conv, FiLM(cond), ReLU) x (n_layers - 1)--> [N, width, g, g]

An optional last 1x1 convolution projects to ``out_channels`` (RT-1: the token width), so the 3x3
convolutions stay narrow (cheap on a CPU) whatever the token width.

This is where a colour word selects the object: the trunk's maps already separate colours and shapes,
and FiLM re-weights their channels per instruction.
"""

from __future__ import annotations

from torch import Tensor, nn

from policystack.policies.layers.film import FiLM


class FilmConvHead(nn.Module):
    """[N, C, g, g] features and [N, E] conditioning -> [N, out_channels or width, g, g]; see the module docstring."""

    def __init__(self, in_channels: int, width: int, cond_dim: int, n_layers: int = 2, out_channels: int | None = None):
        super().__init__()
        if n_layers < 1 or width < 1:
            raise ValueError(f"FilmConvHead needs n_layers >= 1 and width >= 1, got {n_layers}, {width}")
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, width, 1)] +
                                   [nn.Conv2d(width, width, 3, padding=1) for _ in range(n_layers - 1)])
        # cond_dim 0: no words to condition on, a plain conv head
        self.films = nn.ModuleList(FiLM(cond_dim, width) for _ in range(n_layers)) if cond_dim > 0 else None
        # a wider output (e.g. a token width) by one 1x1 projection: the 3x3s stay narrow and cheap
        self.project = nn.Conv2d(width, out_channels, 1) if out_channels not in (None, width) else None

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = (x if self.films is None else self.films[i](x, cond)).relu()
        return x if self.project is None else self.project(x)
