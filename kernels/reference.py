"""Plain-torch reference implementations of smoothgen's ops.

Each fused kernel of this package takes the same arguments as its `*_reference` twin here and is
tested against it.
"""
from __future__ import annotations

import torch


def gaussian_noise_reference(
    x: torch.Tensor, num_copies: int, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """num_copies noisy copies x + sigma·ε, ε ~ N(0, I), made on x's device.

    Args:
        x: one input, any shape.
        num_copies: number of copies b.
        sigma: noise standard deviation.
        generator: a torch.Generator on x's device (None: torch's default generator).

    Returns:
        A new tensor of shape [b, *x.shape] and x's dtype.

    Shapes:
        x: [*S] -> [b, *S]
    """
    noise = torch.randn((num_copies, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    # In place: one temporary ([b, *S]) instead of two.
    return noise.mul_(sigma).add_(x)
