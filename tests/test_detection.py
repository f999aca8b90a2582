"""Detectors as center-smoothing base models (smoothgen.detection, docs/theory.md §2.3): the torch NMS that
stands in for torchvision's, the scoped import of facenet-pytorch's MTCNN, the box adapters, the
jaccard-match metric, and a certificate on boxes against an exact oracle."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.stats import norm

from smoothgen import stats
from smoothgen.center import CenterSmoother
from smoothgen.engine import noise_tv
from smoothgen.detection import BoxSet, CallableDetector, TopBox, batched_nms
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.metrics import get_metric


def greedy_nms(boxes, scores, idxs, threshold):
    """The textbook greedy loop: highest score first (earlier index on ties), drop same-group boxes with IoU > t."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if int(idxs[i]) != int(idxs[j]):
                continue
            a, b = boxes[i].tolist(), boxes[j].tolist()
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def random_boxes(gen, n, groups):
    corner = torch.rand(n, 2, generator=gen) * 20
    size = torch.rand(n, 2, generator=gen) * 10 + 0.5
    boxes = torch.cat([corner, corner + size], dim=1)
    scores = torch.round(torch.rand(n, generator=gen) * 8) / 8  # many ties
    idxs = torch.randint(0, groups, (n,), generator=gen)
    return boxes, scores, idxs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 60), groups=st.integers(1, 5), threshold=st.sampled_from([0.3, 0.5, 0.7]))
def test_batched_nms_is_the_greedy_choice(seed, n, groups, threshold):
    boxes, scores, idxs = random_boxes(torch.Generator().manual_seed(seed), n, groups)
    assert batched_nms(boxes, scores, idxs, threshold).tolist() == greedy_nms(boxes, scores, idxs, threshold)


def test_batched_nms_matches_torchvision_where_it_loads():
    try:
        from torchvision.ops import batched_nms as reference
    except Exception:  # not installable next to this project's CPU torch (see smoothgen.detection)
        pytest.skip("torchvision does not load here; the greedy oracle above covers the same function")
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        boxes, scores, idxs = random_boxes(gen, 80, 4)
        scores = scores + torch.rand(80, generator=gen) * 1e-3  # torchvision orders exact ties unstably
        assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), reference(boxes, scores, idxs, 0.5))


def test_facenet_import_leaves_no_torchvision_behind():
    """The stand-in torchvision exists only while facenet's module is imported: afterwards `import torchvision`
    fails as before (transformers and diffusers probe for it), and those libraries import cleanly."""
    code = (
        "import importlib, sys\n"
        "from smoothgen.detection import load_facenet_mtcnn\n"
        "MTCNN = load_facenet_mtcnn()\n"
        "import facenet_pytorch.models.utils.detect_face as d\n"
        "from smoothgen.detection import batched_nms\n"
        "works = True\n"
        "try:\n"
        "    importlib.import_module('torchvision.ops')\n"
        "except Exception:\n"
        "    works = False\n"
        "assert d.batched_nms is batched_nms or works, d.batched_nms\n"
        "assert works or not any(k == 'torchvision' or k.startswith('torchvision.') for k in sys.modules), sorted(sys.modules)\n"
        "import transformers\n"
        "from transformers import AutoModel\n"
        "from diffusers import UNet2DConditionModel\n"
        "print('ok', works)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def _lfw(count, size=100):
    import skimage.data

    faces = torch.tensor(skimage.data.lfw_subset()[:count], dtype=torch.float32)[:, None]
    return torch.nn.functional.interpolate(faces, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def mtcnn():
    from smoothgen.detection import MTCNNDetector

    return MTCNNDetector()


def test_mtcnn_boxes_are_facenets_own(mtcnn):
    """The adapter returns exactly what facenet's MTCNN.detect gives on the same 0..255 pixels (astronaut.png
    and LFW crops): the face found, the largest first."""
    import skimage.data

    astronaut = torch.tensor(skimage.data.astronaut() / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    (boxes, scores), = mtcnn.detect(astronaut)
    assert len(boxes) == 1 and float(scores[0]) > 0.99
    x1, y1, x2, y2 = boxes[0].tolist()
    assert 160 < x1 < 200 and 50 < y1 < 80 and 250 < x2 < 290 and 150 < y2 < 190  # her face
    faces = _lfw(20)
    ours = mtcnn.detect(faces)
    pixels = (faces.expand(-1, 3, -1, -1) * 255).permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        theirs, _ = mtcnn.mtcnn.detect(pixels)
    found = 0
    for (boxes, _), box in zip(ours, theirs):
        if box is None:
            assert len(boxes) == 0
        else:
            found += 1
            np.testing.assert_array_equal(boxes.numpy(), np.asarray(box, dtype=np.float32))
    assert found >= 19  # measured: 19 of the first 20 crops at 100 x 100


def test_mtcnn_batches_like_single_images(mtcnn):
    faces = _lfw(6)
    noisy = faces + 0.05 * torch.randn(faces.shape, generator=torch.Generator().manual_seed(0))
    together = TopBox(mtcnn)(noisy)
    alone = torch.cat([TopBox(mtcnn)(noisy[i : i + 1]) for i in range(len(noisy))])
    torch.testing.assert_close(together, alone, atol=1e-3, rtol=0)


def test_opencv_cascade_finds_faces():
    from smoothgen.detection import CascadeDetector

    detector = CascadeDetector("haar")
    found = TopBox(detector)(_lfw(20))
    assert int((found[:, 2] > found[:, 0]).sum()) >= 15  # measured: 18 of 20
    with pytest.raises(InvalidParameterError):
        CascadeDetector("no-such-cascade")


def test_top_box_and_box_set_outputs():
    def detector(images):
        # Two boxes per image, the second with the higher score; none for an all-zero image.
        out = []
        for image in images:
            if float(image.abs().sum()) == 0:
                out.append((torch.zeros(0, 4), torch.zeros(0)))
            else:
                out.append((torch.tensor([[0.0, 0, 4, 4], [1.0, 1, 3, 3]]), torch.tensor([0.5, 0.9])))
        return out

    images = torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8)])
    top = TopBox(CallableDetector(detector))(images)
    assert top.tolist() == [[1.0, 1, 3, 3], [0.0, 0, 0, 0]]  # by score: the 0.9 box first
    assert get_metric("jaccard").distances(top, top).tolist() == [[0.0, 1.0], [1.0, 0.0]]  # no box is the empty set
    both = BoxSet(CallableDetector(detector), slots=3, min_score=0.4)(images)
    assert both.shape == (2, 3, 4) and both[0, :2].tolist() == [[1.0, 1, 3, 3], [0.0, 0, 4, 4]]
    assert float(both[0, 2].abs().sum()) == 0 and float(both[1].abs().sum()) == 0
    assert float(BoxSet(CallableDetector(detector), slots=1, min_score=0.95)(images).abs().sum()) == 0
    with pytest.raises(InvalidParameterError):
        BoxSet(CallableDetector(detector), slots=7)
    with pytest.raises(InvalidInputError):
        TopBox(CallableDetector(detector))(torch.ones(8, 8))
    with pytest.raises(InvalidInputError):
        TopBox(CallableDetector(detector))([["not", "pixels"]])
    with pytest.raises(InvalidInputError):
        TopBox(CallableDetector(detector))(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ModelOutputError):
        TopBox(CallableDetector(lambda images: torch.zeros(len(images), 4)))(images)
    padded = torch.tensor([[[0.0, 0, 2, 2, 0.3], [0, 0, 0, 0, float("-inf")]]] * 2)
    assert TopBox(CallableDetector(lambda images: padded))(images).tolist() == [[0.0, 0, 2, 2]] * 2


def _random_box_sets(gen, n, k):
    corner = torch.rand(n, k, 2, generator=gen) * 10
    size = torch.rand(n, k, 2, generator=gen) * 6 - 1  # some empty boxes
    return torch.cat([corner, corner + size], dim=-1)


def test_jaccard_match_is_the_best_pairing_and_a_metric():
    gen = torch.Generator().manual_seed(0)
    jac, match = get_metric("jaccard"), get_metric("jaccard-match")
    assert match.gamma == 1.0
    a, b, c = (_random_box_sets(gen, 6, 3) for _ in range(3))
    d = match.distances(a, b)
    for i, j in itertools.product(range(6), range(6)):
        best = min(float(jac.distances(a[i : i + 1], b[j : j + 1, list(p)])[0, 0]) for p in itertools.permutations(range(3)))
        assert float(d[i, j]) == pytest.approx(best, abs=1e-6)
    assert float(match.distances(a, a).diagonal().abs().max()) == 0
    torch.testing.assert_close(match.distances(a, b), match.distances(b, a).T)
    torch.testing.assert_close(match.distances(a[:, [2, 0, 1]], b), d)  # slot order does not matter
    triangle = match.distances(a, c)[:, None, :] - match.distances(a, b)[:, :, None] - match.distances(b, c)[None]
    assert float(triangle.max()) <= 1e-6
    with pytest.raises(InvalidInputError):
        match.distances(torch.zeros(2, 7, 4), torch.zeros(2, 7, 4))
    with pytest.raises(InvalidInputError):
        match.distances(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4))


class SignDetector:
    """Box A when ⟨u, x⟩ ≥ 0, else box B, with J(A, B) = 1/2: the exact smoothed box and its certificate are
    known (the oracle of the box adapter)."""

    box_a = torch.tensor([0.0, 0.0, 2.0, 1.0])
    box_b = torch.tensor([0.0, 0.0, 1.0, 1.0])

    def __init__(self, dim):
        self.u = torch.zeros(dim)
        self.u[0] = 1.0

    def detect(self, images):
        side = images.reshape(len(images), -1) @ self.u >= 0
        return [((self.box_a if s else self.box_b)[None], torch.ones(1)) for s in side.tolist()]


@pytest.mark.parametrize("h", [1.0, 2.0])
def test_box_certificate_against_the_exact_oracle(h):
    """With P(A) = Φ(t/σ) at ⟨u, x⟩ = t: ε_out is 0 (the smoothed box cannot change) only when the DKW level q of
    CERTIFY lies below P(A), and then t − ε_in > 0, so the true smoothed box at every x' within ε_in is A;
    when P(A) is well below q, ε_out = 3·J(A, B) = 1.5, which covers the true change (0 or J(A, B))."""
    sigma, n, m = 0.5, 2000, 20_000
    eps_in = h * sigma
    detector = SignDetector(dim=16)
    smoother = CenterSmoother(TopBox(detector), sigma, "jaccard", n_candidates=None)
    q = stats.dkw_quantile_level(stats.center_certify_level(eps_in, sigma, 0.05), m, 0.005, noise_tv=noise_tv(16))
    for t_over_sigma in (norm.ppf(q) + 0.5, norm.ppf(q) - 0.5, 1.0, 3.5):
        x = torch.zeros(1, 4, 4)
        x.view(-1)[0] = t_over_sigma * sigma
        cert = smoother.certify(x, eps_in, n=n, m=m, seed=int(10 * t_over_sigma) + 7)
        assert not cert.abstained and cert.q == pytest.approx(q)
        assert torch.equal(cert.center, SignDetector.box_a[None][0])
        if cert.eps_out == 0.0:
            assert t_over_sigma * sigma - eps_in > 0  # the truth: no x' within eps_in flips the smoothed box
        else:
            assert cert.eps_out == pytest.approx(1.5)
        if norm.cdf(t_over_sigma) >= q + 0.01:
            assert cert.eps_out == 0.0
        if norm.cdf(t_over_sigma) <= q - 0.01:
            assert cert.eps_out == pytest.approx(1.5)
