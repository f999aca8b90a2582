"""What every training script of the embedded models shares: deterministic seeding, the weights files
and their records in `weights/models.json` (`save_model`, `save_tensors`, `update_metadata`)."""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from smoothgen.models import METADATA_FILENAME
from smoothgen.models.data import SPLIT_SEED, TEST_SIZE
from smoothgen.results import write_atomically


METADATA_FORMAT_VERSION = 1


DEFAULT_SEED = 0


EVAL_NOISE_SEED = 1234
"""Seed of the single noise draw per test image behind the noisy test metrics (independent of training)."""


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed initialization, enforce deterministic algorithms, and yield a generator for data randomness.

    The global RNG state and the determinism flags are restored on exit, so that training inside a
    test or a notebook does not change the caller's random stream.

    Args:
        seed: The training seed.

    Returns:
        A context manager yielding a CPU `torch.Generator` for shuffling and noise.
    """
    # Two independent streams from one seed: weight initialization (global RNG) and data (generator).
    # Seeding both with `seed` itself would make the init draws and the first noise draws the same stream.
    init_seed, data_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield torch.Generator().manual_seed(data_seed)
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _timing_record(seconds: float, cpu_seconds: float) -> dict[str, Any]:
    # Wall time depends on what else runs on the machine; CPU time (all threads) much less.
    return {"train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "train_threads": torch.get_num_threads()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], out_dir: Path, filename: str, record: dict[str, Any],
                 description: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save named tensors (a model's or an adapter's state dict) as safetensors, whole or not at all, and return
    the metadata record completed with ``file`` and ``sha256``.

    Args:
        tensors: The tensors by name.
        out_dir: Destination folder (created if missing).
        filename: Weights file name inside out_dir.
        record: Metadata record of the training function.
        description: What the file header says (default: the record's architecture).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # One metadata key only: safetensors writes the header metadata in hash-map order, so several
    # keys would make the file bytes (and its sha256 in models.json) differ between identical runs.
    description = {"architecture": record["architecture"]} if description is None else description
    header = {"smoothgen": json.dumps(description, sort_keys=True)}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return {**record, "file": filename, "sha256": _sha256(path)}


def save_model(model: nn.Module, out_dir: Path, filename: str, record: dict[str, Any],
               dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Save a model's weights as safetensors and return its metadata record completed with file and hash.

    Args:
        model: The trained model.
        out_dir: Destination folder (created if missing).
        filename: Weights file name inside out_dir.
        record: Metadata record from `train_classifier` / `train_autoencoder`.
        dtype: The precision the tensors are stored in (default: as they are).

    Returns:
        A copy of record with ``file`` and ``sha256`` added.
    """
    tensors = {k: v if dtype is None else v.to(dtype) for k, v in model.state_dict().items()}
    return save_tensors(tensors, out_dir, filename, record,
                        {"architecture": record["architecture"], "kwargs": record["kwargs"]})


def update_metadata(out_dir: Path, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge model records into `out_dir/models.json` (models trained earlier keep their records).

    Args:
        out_dir: Folder holding the weights and the metadata file.
        records: New records by model name.

    Returns:
        The whole metadata written.
    """
    path = out_dir / METADATA_FILENAME
    models: dict[str, Any] = {}
    if path.exists():
        models = dict(json.loads(path.read_text(encoding="utf-8")).get("models", {}))
    models.update(records)
    metadata = {
        "format_version": METADATA_FORMAT_VERSION,
        "dataset": {
            "name": "sklearn.datasets.load_digits",
            "pixel_scale": "value / 16, in [0, 1]",
            "split": f"train_test_split(test_size={TEST_SIZE}, random_state={SPLIT_SEED}, stratify=y)",
            "test_size": TEST_SIZE,
        },
        "torch_version": torch.__version__,
        "models": {name: models[name] for name in sorted(models)},
    }
    text = json.dumps(metadata, indent=2, sort_keys=False) + "\n"
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return metadata
