"""Architectures of the embedded digits models: a small CNN classifier and a convolutional autoencoder.

Both are plain `nn.Module`s without input checks or Python control flow in `forward`, so that they can
be compiled with `torch.jit.script` and `torch.export.export` (with a dynamic batch dimension).
They are deliberately small: randomized smoothing evaluates the base model on 10^4-10^5 noisy copies
of every input, and the classifier runs 100k samples in about a second on 2 CPU cores.
"""
from __future__ import annotations

import torch
from torch import nn

from smoothgen.models.data import DIGITS_SHAPE, NUM_CLASSES

_CHANNELS, _HEIGHT, _WIDTH = DIGITS_SHAPE


class DigitsCNN(nn.Module):
    """Convolutional classifier for 8x8 digits images.

    conv(1->16, 3x3, pad 1) - ReLU - conv(16->32, 3x3, pad 1) - ReLU - maxpool 2
    - flatten (32*4*4) - linear 128 - ReLU - linear num_classes.

    Args:
        num_classes: Number of output logits.

    Shapes:
        input: [B, 1, 8, 8], pixels nominally in [0, 1] (noisy inputs outside that range are expected).
        output: [B, num_classes] logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(_CHANNELS, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * (_HEIGHT // 2) * (_WIDTH // 2), 128),
            nn.ReLU(),
            nn.Linear(128, self.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images.

        Args:
            x: Batch of images.

        Returns:
            The logits.

        Shapes:
            x: [B, 1, 8, 8]; returns [B, num_classes].
        """
        return self.classifier(self.features(x))


class DigitsAutoencoder(nn.Module):
    """Convolutional autoencoder for 8x8 digits images (the dimensionality-reduction model).

    Encoder: conv(1->16, 3x3, pad 1) - ReLU - conv(16->32, 3x3, stride 2, pad 1) - ReLU - flatten
    (32*4*4) - linear latent_dim. Decoder: linear 32*4*4 - ReLU - transposed conv(32->16, 4x4, stride 2,
    pad 1) - ReLU - conv(16->1, 3x3, pad 1) - sigmoid, so every output pixel lies in [0, 1] whatever the
    (noisy) input; center smoothing certifies these outputs under total-variation distance.

    Args:
        latent_dim: Size of the latent code.

    Shapes:
        input: [B, 1, 8, 8], pixels nominally in [0, 1].
        latent code: [B, latent_dim].
        output: [B, 1, 8, 8], pixels in [0, 1].
    """

    def __init__(self, latent_dim: int = 16) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        hidden = 32 * (_HEIGHT // 2) * (_WIDTH // 2)
        self.encoder = nn.Sequential(
            nn.Conv2d(_CHANNELS, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(hidden, self.latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, hidden),
            nn.ReLU(),
            nn.Unflatten(1, (32, _HEIGHT // 2, _WIDTH // 2)),
            nn.ConvTranspose2d(32, 16, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, _CHANNELS, kernel_size=3, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to latent codes.

        Args:
            x: Batch of images.

        Returns:
            The latent codes.

        Shapes:
            x: [B, 1, 8, 8]; returns [B, latent_dim].
        """
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent codes to images with pixels in [0, 1].

        Args:
            z: Batch of latent codes.

        Returns:
            The reconstructed images.

        Shapes:
            z: [B, latent_dim]; returns [B, 1, 8, 8].
        """
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a batch of images.

        Args:
            x: Batch of images.

        Returns:
            The reconstructions, pixels in [0, 1].

        Shapes:
            x: [B, 1, 8, 8]; returns [B, 1, 8, 8].
        """
        return self.decoder(self.encoder(x))
