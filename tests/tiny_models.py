"""Tiny randomly initialised models that several test files build (nothing is downloaded)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: two threads only add synchronisation, which costs 30× when the 2 cores are busy (1.8 s
    against 61 s for one epoch of the tiny text UNet, measured under load). Imported by a test module, it
    runs its tests on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(cross_attention_dim: int = 12, **kwargs) -> torch.nn.Module:
    """A diffusers UNet2DConditionModel on 8×8 single-channel images, seeded (torch.manual_seed(0))."""
    import diffusers

    torch.manual_seed(0)
    config = dict(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=4,
    )
    return diffusers.UNet2DConditionModel(**{**config, **kwargs}).eval()


def tiny_code_lm(seed: int = 0, scale: float = 20.0, context_length: int = 48) -> torch.nn.Module:
    """A randomly initialised CodeLM; weights scaled up so that its next-token distributions are peaked
    (GPT-2's N(0, 0.02) init gives nearly uniform ones, which certify nothing)."""
    from smoothgen.models.lm import CodeLM

    torch.manual_seed(seed)
    model = CodeLM(d_model=32, n_layers=2, n_heads=2, context_length=context_length)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval()
