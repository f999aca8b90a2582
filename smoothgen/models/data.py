"""The sklearn 8x8 digits data set, with the one fixed train/test split every smoothgen model uses.

The split is fixed (stratified, `random_state=0`, 450 test images) so that the accuracies recorded in
`weights/models.json` can be recomputed exactly, and experiments on the test set never touch an image
the embedded models were trained on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

DIGITS_SHAPE: tuple[int, int, int] = (1, 8, 8)
"""Shape of one digits image, channels first: (channels, height, width)."""

NUM_CLASSES: int = 10
"""Number of classes (the digits 0..9)."""

TEST_SIZE: int = 450
"""Number of test images of the fixed split."""

SPLIT_SEED: int = 0
"""`random_state` of the fixed split."""

# sklearn's digits pixels are integer counts 0..16 (a 4x4 block of a 32x32 bitmap each).
_PIXEL_MAX = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed train/test split of the digits data set.

    Attributes:
        x_train: Training images, float32, pixels in [0, 1].
        y_train: Training labels, int64, in 0..9.
        x_test: Test images, float32, pixels in [0, 1].
        y_test: Test labels, int64, in 0..9.

    Shapes:
        x_train: [1347, 1, 8, 8]; y_train: [1347].
        x_test: [450, 1, 8, 8]; y_test: [450].
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=1)
def _cached_split() -> DigitsSplit:
    # Imported here so that importing smoothgen.models does not pay for sklearn unless data is needed.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float64) / _PIXEL_MAX).astype(np.float32)
    x = x.reshape((-1, *DIGITS_SHAPE))
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    arrays = [np.ascontiguousarray(a) for a in (x_train, y_train, x_test, y_test)]
    for a in arrays:
        # The cached master copy must never change: every caller gets its own copy of it.
        a.setflags(write=False)
    return DigitsSplit(*arrays)


def load_digits_split() -> DigitsSplit:
    """Load the fixed train/test split of the sklearn digits data set.

    The split is computed once per process and cached; each call returns fresh, writable copies so
    that a caller modifying its arrays (or handing them to `torch.from_numpy`) cannot corrupt the cache.

    Returns:
        A `DigitsSplit`: float32 images with pixels in [0, 1] and int64 labels.

    Shapes:
        x_train: [1347, 1, 8, 8]; y_train: [1347]; x_test: [450, 1, 8, 8]; y_test: [450].
    """
    cached = _cached_split()
    return DigitsSplit(
        x_train=cached.x_train.copy(),
        y_train=cached.y_train.copy(),
        x_test=cached.x_test.copy(),
        y_test=cached.y_test.copy(),
    )
