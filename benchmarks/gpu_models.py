"""Models of standard shapes with random weights, for timing on a GPU (benchmarks/gpu_check.py).

Neither needs torchvision or diffusers: a ResNet-50-shaped classifier (bottleneck blocks [3, 4, 6, 3],
widths 64..2048, 1000 classes, ≈ 25.6 M parameters) for ImageNet-size inputs, and a small CIFAR-size
noise-prediction UNet ε(x_t, t) with a linear β schedule, as DDS's purifier needs. Their weights are
random: they time the engine, they certify nothing meaningful.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50's layout: a 7×7 stem, bottleneck stages [3, 4, 6, 3], global pooling, a linear head."""

    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        blocks, inplanes = [], 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            for j in range(count):
                blocks.append(Bottleneck(inplanes, planes, stride=2 if (j == 0 and i > 0) else 1))
                inplanes = planes * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class CifarUNet(nn.Module):
    """A two-level UNet ε(x_t, t) for 3×32×32 images with its β schedule (linear, T = 1000).

    Attributes:
        betas: float64 [T]; num_timesteps: T; sample_shape: (3, 32, 32).
    """

    def __init__(self, channels: int = 128, num_timesteps: int = 1000):
        super().__init__()
        self.num_timesteps = num_timesteps
        self.sample_shape = (3, 32, 32)
        self.register_buffer("betas", torch.linspace(1e-4, 0.02, num_timesteps, dtype=torch.float64))
        c, tdim = channels, channels * 4
        self.tdim = c
        self.temb = nn.Sequential(nn.Linear(c, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(3, c, 3, padding=1)
        self.down1, self.down2 = _ResBlock(c, c, tdim), _ResBlock(c, 2 * c, tdim)
        self.mid = _ResBlock(2 * c, 2 * c, tdim)
        self.up2, self.up1 = _ResBlock(4 * c, c, tdim), _ResBlock(2 * c, c, tdim)
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.temb(_timestep_embedding(t, self.tdim).to(self.inp.weight.dtype))
        h0 = self.inp(x)
        h1 = self.down1(h0, temb)                                    # 32×32
        h2 = self.down2(nn.functional.avg_pool2d(h1, 2), temb)       # 16×16
        m = self.mid(nn.functional.avg_pool2d(h2, 2), temb)          # 8×8
        u2 = self.up2(torch.cat([nn.functional.interpolate(m, scale_factor=2.0), h2], 1), temb)
        u1 = self.up1(torch.cat([nn.functional.interpolate(u2, scale_factor=2.0), h1], 1), temb)
        return self.out(u1)


class CifarClassifier(nn.Module):
    """A small CIFAR-size CNN (10 classes) behind the purifier."""

    def __init__(self, width: int = 64):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
