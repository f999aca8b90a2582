"""Shared fixtures."""
import pytest
import torch

from oracles import LinearBinary


@pytest.fixture
def linear_binary():
    return LinearBinary(torch.tensor([3.0, -4.0]), 0.5)
