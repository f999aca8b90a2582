"""The embedding example (csrc/examples/certify_buffers.cpp) on buffers written here, against the Python API."""
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothgen import stats
from smoothgen.center import min_median_center
from smoothgen.metrics import get_metric

BUILD = Path(os.environ.get("SMOOTHGEN_CORE_BUILD", Path(__file__).resolve().parents[2] / "build" / "core"))
EXAMPLE = BUILD / "smoothgen_certify_example"

pytestmark = pytest.mark.skipif(not EXAMPLE.exists(), reason=f"standalone core not built ({EXAMPLE}); run `make core`")


def test_example_prints_both_certificates_like_the_python_api(tmp_path):
    rng = np.random.default_rng(0)
    selection = np.array([1, 2, 90, 7], dtype=np.int64)
    estimation = np.array([10, 30, 9900, 60], dtype=np.int64)
    n, m, dim, sigma, eps_in = 1500, 3000, 5, 0.5, 0.2
    outputs = (rng.normal(size=(2 * n + m, dim)) * 0.2 + 3).astype(np.float32)
    np.concatenate([selection, estimation]).tofile(tmp_path / "counts.bin")
    outputs.tofile(tmp_path / "outputs.bin")
    run = subprocess.run(
        [str(EXAMPLE), str(tmp_path / "counts.bin"), str(tmp_path / "outputs.bin"), str(dim), str(n), str(m), str(sigma), str(eps_in)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    cohen = re.search(r"cohen certificate: prediction=(-?\d+) radius=([\d.]+)", run.stdout)
    center = re.search(r"center certificate: (\w+) center_index=(\d+) .* eps_out=([\d.inf]+)", run.stdout)
    assert cohen and center, run.stdout
    p_lower = stats.clopper_pearson_lower(9900, 10000, 0.001)
    assert int(cohen.group(1)) == 2
    assert float(cohen.group(2)) == pytest.approx(stats.cohen_radius(sigma, p_lower), abs=1e-6)
    ref_center, _ = min_median_center(torch.from_numpy(outputs[:n]), get_metric("l2"))
    assert torch.equal(torch.from_numpy(outputs[int(center.group(2))]), ref_center[0])
    assert center.group(1) == "certified"
