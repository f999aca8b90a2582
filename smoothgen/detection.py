"""Object detectors as base models of center smoothing: their boxes in a metric space (docs/theory.md §2.3).

A detector maps a batch of images to, per image, zero or more boxes with scores. Center smoothing needs a
deterministic function into a metric space, and two adapters make one of any detector:

- `TopBox(detector)`: the detector's first box (its own choice: MTCNN's largest face, a cascade's largest
  detection, the highest score for a generic detector) as a set of pixels, or the empty set when it finds
  nothing, in ``[b, 4]`` boxes ``(x1, y1, x2, y2)`` where ``(0, 0, 0, 0)`` is "no box". The metric is
  ``jaccard`` (1 − IoU; the empty set is at distance 1 from any box and 0 from itself), a metric (γ = 1).
- `BoxSet(detector, slots=K, min_score=s)`: every box scoring at least s, the K best, padded with empty
  sets, in ``[b, K, 4]``. The metric is ``jaccard-match``: the least mean Jaccard distance over the ways to
  pair the slots of one output with the slots of the other, the 1-Wasserstein distance between the
  uniform measures on the K slot sets under the Jaccard metric, hence a metric (γ = 1; proof in §2.3).

Detectors (`Detector`): `MTCNNDetector` (facenet-pytorch's pretrained MTCNN, the detector of Kumar &
Goldstein's Figure 3, run unchanged on the whole batch of noisy copies), `CascadeDetector` (OpenCV's
pretrained Haar frontal-face cascades: a classic, gradient-free detector), and `CallableDetector`
(any torch module, ONNX model or function that returns boxes). Images are ``[b, C, H, W]`` floats with
pixels in [0, 1] (C = 1 or 3); the noise of the certificate is added there, in that scale.

facenet-pytorch's detection code imports one function of torchvision, `batched_nms`. torchvision is not
installable next to the CPU build of torch this project pins (the registry's wheels link the CUDA build,
and a torchvision that fails to import breaks transformers and diffusers, which probe for it), so where
``import torchvision`` fails, `load_facenet_mtcnn` imports facenet's module with smoothgen's own
`batched_nms` standing in, and removes the stand-in from ``sys.modules`` again: nothing else in the
process sees a torchvision, and a user whose torchvision works keeps theirs.
"""
from __future__ import annotations

import importlib
import math
import sys
import threading
import types
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelLoadError, ModelOutputError, first_line
from smoothgen.metrics import MAX_MATCH_SLOTS
from smoothgen.validate import check_image_batch

__all__ = [
    "BoxSet",
    "CallableDetector",
    "CascadeDetector",
    "Detector",
    "MTCNNDetector",
    "TopBox",
    "batched_nms",
    "load_facenet_mtcnn",
]

#: The most slots `BoxSet` takes: the ``jaccard-match`` metric tries all K! pairings.
MAX_SLOTS = MAX_MATCH_SLOTS


# --------------------------------------------------------------------------------------------------
# Non-maximum suppression in torch (what facenet-pytorch needs of torchvision)
# --------------------------------------------------------------------------------------------------


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression within each group, as torchvision.ops.batched_nms computes it.

    Boxes are taken in decreasing score order (a stable sort: the earlier index first on ties); a box is
    kept unless a kept box of the same group overlaps it with IoU > iou_threshold, IoU = inter / (area_a +
    area_b − inter) with area = (x2 − x1)·(y2 − y1). All groups are suppressed at once: per group the
    pairwise overlaps of its boxes (padded to the largest group), then the greedy choice as the fixed
    point of keep[j] = no kept i before j overlaps j, which is unique (by induction over the order) and
    reached in at most (boxes in a group) steps, usually a few.

    Shapes:
        boxes: [N, 4] (x1, y1, x2, y2); scores: [N]; idxs: [N] integer group of each box;
        result: [M] indices of the kept boxes, in decreasing score order.
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices
    grouped = torch.sort(idxs[order], stable=True)  # by group, score order kept within each
    order = order[grouped.indices]
    _, counts = torch.unique_consecutive(grouped.values, return_counts=True)
    groups, width = counts.shape[0], int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(groups, device=device), counts)
    slot = torch.arange(n, device=device) - starts[group]
    padded = torch.zeros(groups, width, 4, dtype=boxes.dtype, device=device)
    padded[group, slot] = boxes[order]
    present = torch.zeros(groups, width, dtype=torch.bool, device=device)
    present[group, slot] = True
    area = (padded[..., 2] - padded[..., 0]) * (padded[..., 3] - padded[..., 1])
    lo = torch.maximum(padded[:, :, None, :2], padded[:, None, :, :2])
    hi = torch.minimum(padded[:, :, None, 2:], padded[:, None, :, 2:])
    side = (hi - lo).clamp(min=0)
    inter = side[..., 0] * side[..., 1]
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)  # 0/0 = NaN never suppresses, as in torchvision
    earlier = torch.ones(width, width, dtype=torch.bool, device=device).triu(1)
    suppresses = (iou > iou_threshold) & earlier  # [g, i, j]: i comes before j and overlaps it
    keep = present
    while True:
        new = present & ~(keep[:, :, None] & suppresses).any(dim=1)
        if torch.equal(new, keep):
            break
        keep = new
    kept = torch.sort(order[keep[group, slot]]).values  # index order first, so that ties keep it
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def _to_tensor(picture: Any) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for what facenet's extract_face passes (an [H, W, C]
    array or a PIL image): [C, H, W] float, divided by 255 when the input is 8-bit."""
    array = np.asarray(picture)
    if array.ndim == 2:
        array = array[:, :, None]
    out = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return out.float().div(255) if array.dtype == np.uint8 else out


_IMPORT_LOCK = threading.Lock()


def _torchvision_works() -> bool:
    try:
        importlib.import_module("torchvision.ops")
        return True
    except Exception:  # ImportError, or the OSError/RuntimeError of a torchvision built for another torch
        return False


def load_facenet_mtcnn() -> Any:
    """facenet-pytorch's `MTCNN` class, imported with smoothgen's `batched_nms` where torchvision cannot load.

    Raises:
        ModelLoadError: facenet-pytorch is not installed (``pip install --no-deps facenet-pytorch==2.5.3``:
            without --no-deps pip would install torchvision, which breaks a CPU-only torch environment).
    """
    with _IMPORT_LOCK:
        if "facenet_pytorch.models.mtcnn" in sys.modules or _torchvision_works():
            return _import_mtcnn()
        names = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
                 "torchvision.transforms.functional")
        saved = {name: sys.modules.get(name) for name in names}
        stand_ins = {name: types.ModuleType(name) for name in names}
        stand_ins["torchvision.ops.boxes"].batched_nms = batched_nms
        stand_ins["torchvision.ops"].batched_nms = batched_nms
        stand_ins["torchvision.transforms.functional"].to_tensor = _to_tensor
        stand_ins["torchvision"].ops = stand_ins["torchvision.ops"]
        stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
        stand_ins["torchvision.ops"].boxes = stand_ins["torchvision.ops.boxes"]
        stand_ins["torchvision.transforms"].functional = stand_ins["torchvision.transforms.functional"]
        sys.modules.update(stand_ins)
        try:
            return _import_mtcnn()
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module


def _import_mtcnn() -> Any:
    try:
        return importlib.import_module("facenet_pytorch.models.mtcnn").MTCNN
    except ImportError as exc:
        raise ModelLoadError(
            f"MTCNN needs facenet-pytorch ({first_line(exc)}): pip install --no-deps facenet-pytorch==2.5.3 "
            "(--no-deps: its torchvision requirement would replace the CPU torch environment's)"
        ) from exc


# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class Detector(Protocol):
    """What the adapters take: images ``[b, C, H, W]`` in [0, 1] → per image (boxes [k, 4], scores [k]),
    boxes as pixel coordinates (x1, y1, x2, y2), the detector's preferred box first."""

    def detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]: ...


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """A float batch [b, C, H, W] with C in (1, 3), finite (validate.check_image_batch; a nested sequence of
    numbers is taken as an array first)."""
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        try:
            images = np.asarray(images)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{name} must be a float array [b, C, H, W], got {type(images).__name__}: {first_line(exc)}") from exc
    return check_image_batch(images, name)


def _to_pixels(images: torch.Tensor, clip: bool) -> torch.Tensor:
    """[b, C, H, W] in [0, 1] (clipped when asked) → [b, H, W, 3] float32 in 0..255 (gray replicated)."""
    x = images.float()
    if clip:
        x = x.clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255.0).permute(0, 2, 3, 1).contiguous()


class MTCNNDetector(torch.nn.Module):
    """facenet-pytorch's pretrained MTCNN (P-, R- and O-Net; weights from its wheel, nothing downloaded).

    The whole batch goes through facenet's own cascade at once (its `MTCNN.detect`): every pyramid level of
    every copy in one P-Net call, the surviving candidates of all copies through R-Net and O-Net together.
    Boxes come back as facenet returns them: the largest face first (``select_largest=True``, its default),
    else by decreasing probability.

    Args:
        min_face_size: smallest face searched for, in pixels (facenet's default 20; the pyramid starts at
            scale 12 / min_face_size, so a larger value is faster and ignores small faces).
        thresholds: P-, R- and O-Net score thresholds (facenet's defaults).
        factor: pyramid scale step.
        select_largest: the largest face first (True) or the most probable.
        clip: clip the noisy pixels to [0, 1] before detection (part of the deterministic base model).
    """

    def __init__(self, min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 select_largest: bool = True, clip: bool = True):
        super().__init__()
        if not (isinstance(min_face_size, int) and min_face_size >= 12):
            raise InvalidParameterError(f"min_face_size must be an integer >= 12 pixels, got {min_face_size!r}")
        mtcnn_class = load_facenet_mtcnn()
        self.mtcnn = mtcnn_class(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                                 select_largest=select_largest, keep_all=True, device="cpu")
        self.mtcnn.eval()
        self.clip = bool(clip)
        self.name = f"mtcnn(min_face_size={min_face_size})"

    def detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images = check_images(images)
        if images.shape[0] == 0:
            return []
        if images.shape[2] < 12 or images.shape[3] < 12:
            raise InvalidInputError(f"MTCNN needs images of at least 12 x 12 pixels, got {tuple(images.shape[2:])}")
        self.mtcnn.device = images.device
        with torch.no_grad():
            boxes, probs = self.mtcnn.detect(_to_pixels(images, self.clip))
        out = []
        for box, prob in zip(boxes, probs):
            if box is None:
                out.append((torch.zeros(0, 4), torch.zeros(0)))
            else:
                out.append((torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(-1, 4),
                            torch.as_tensor(np.asarray(prob, dtype=np.float32)).reshape(-1)))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # a Detector is a module, for factories
        return TopBox.stack(self.detect(images))


#: OpenCV's pretrained frontal-face Haar cascades (in its wheel, cv2.data.haarcascades), by the name
#: `CascadeDetector` takes.
CASCADES = {"haar": "haarcascade_frontalface_default.xml", "haar-alt2": "haarcascade_frontalface_alt2.xml"}


class CascadeDetector:
    """OpenCV's pretrained frontal-face cascade classifier (Viola–Jones Haar features), black-box.

    The cascade files ship in the opencv-python(-headless) wheel (``cv2.data.haarcascades``, OpenCV 4: version
    5 moved the cascades out of its main module); nothing is downloaded. OpenCV's detector takes one 8-bit gray image at a time, so the batch is split over a thread
    pool (OpenCV releases the GIL); images are quantised to 8 bits as part of the base model, after clipping
    to [0, 1]. The largest detection comes first.

    Args:
        cascade: "haar" (haarcascade_frontalface_default), "haar-alt2", or a path to a cascade XML.
        scale_factor, min_neighbors, min_size: cv2.CascadeClassifier.detectMultiScale's parameters.
        threads: worker threads (default: torch's intra-op thread count).
    """

    def __init__(self, cascade: str = "haar", scale_factor: float = 1.1, min_neighbors: int = 3,
                 min_size: tuple[int, int] = (20, 20), threads: int | None = None):
        try:
            import cv2
        except ImportError as exc:
            raise ModelLoadError(f"CascadeDetector needs OpenCV ({first_line(exc)}): pip install opencv-python-headless") from exc
        import os

        path = cascade if os.path.isfile(cascade) else None
        if path is None:
            if cascade not in CASCADES:
                raise InvalidParameterError(f"cascade must be one of {sorted(CASCADES)} or a cascade XML file, got {cascade!r}")
            path = os.path.join(cv2.data.haarcascades, CASCADES[cascade])
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the cascades out of its main module
            raise ModelLoadError(f"OpenCV {cv2.__version__} has no CascadeClassifier: pip install 'opencv-python-headless<5'")
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise ModelLoadError(f"OpenCV could not load the cascade {path}")
        if not (scale_factor > 1.0 and isinstance(min_neighbors, int) and min_neighbors >= 0):
            raise InvalidParameterError(f"scale_factor must be > 1 and min_neighbors an integer >= 0, got {scale_factor}, {min_neighbors}")
        self._cv2 = cv2
        self._path = path
        self._local = threading.local()  # one CascadeClassifier per thread: detectMultiScale is not reentrant
        self.scale_factor, self.min_neighbors, self.min_size = float(scale_factor), int(min_neighbors), tuple(min_size)
        self.threads = max(1, threads if threads is not None else torch.get_num_threads())
        self.name = f"opencv-cascade({os.path.basename(path)})"

    def _classifier(self):
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            classifier = self._local.classifier = self._cv2.CascadeClassifier(self._path)
        return classifier

    def _one(self, gray: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        found = self._classifier().detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                                    minSize=self.min_size)
        if len(found) == 0:
            return torch.zeros(0, 4), torch.zeros(0)
        rects = np.asarray(found, dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        area = rects[:, 2] * rects[:, 3]
        order = np.argsort(-area, kind="stable")
        return torch.from_numpy(boxes[order]), torch.from_numpy(area[order] / area.max())

    def detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images = check_images(images)
        x = images.float().clamp(0.0, 1.0)
        gray = x[:, 0] if x.shape[1] == 1 else (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
        pixels = (gray * 255.0).round().to(torch.uint8).cpu().numpy()
        if self.threads == 1 or len(pixels) == 1:
            return [self._one(p) for p in pixels]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(self._one, pixels))


class CallableDetector:
    """Any model that returns boxes, as a `Detector`: a torch module, a smoothgen Runtime (e.g. an ONNX
    model through `smoothgen.loading.load_model`) or a function of the image batch.

    The model's output, per batch of b images, is one of: a list of b (boxes [k, 4], scores [k]) pairs; a
    list of b arrays [k, 5] (x1, y1, x2, y2, score); or one array [b, k, 5] padded with rows of score
    −inf or NaN. Boxes are ordered by decreasing score (stable) unless ``keep_order``.
    """

    def __init__(self, model: Any, keep_order: bool = False):
        from smoothgen.engine import as_runtime

        self.runtime = as_runtime(model)
        self.keep_order = bool(keep_order)
        self.name = getattr(model, "name", type(model).__name__)

    def detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images = check_images(images)
        out = self.runtime.run(images.to(self.runtime.device))
        b = images.shape[0]
        if isinstance(out, (torch.Tensor, np.ndarray)):
            out = torch.as_tensor(out)
            if out.dim() != 3 or out.shape[0] != b or out.shape[2] != 5:
                raise ModelOutputError(f"a detector returning one array must give [b, k, 5] = (x1, y1, x2, y2, score), got {tuple(out.shape)}")
            rows = [o[~torch.isnan(o[:, 4]) & (o[:, 4] > -math.inf)] for o in out]
            out = [(r[:, :4], r[:, 4]) for r in rows]
        if not isinstance(out, (list, tuple)) or len(out) != b:
            raise ModelOutputError(f"a detector must return one entry per image ({b}), got {type(out).__name__}")
        result = []
        for i, item in enumerate(out):
            if isinstance(item, (tuple, list)) and len(item) == 2:
                boxes, scores = (torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in item)
            else:
                rows = torch.as_tensor(np.asarray(item, dtype=np.float32))
                if rows.dim() != 2 or rows.shape[1] != 5:
                    raise ModelOutputError(f"detection {i}: expected (boxes, scores) or rows [k, 5], got {short_shape(item)}")
                boxes, scores = rows[:, :4], rows[:, 4]
            boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
            if boxes.shape[0] != scores.shape[0]:
                raise ModelOutputError(f"detection {i}: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
            if not (bool(torch.isfinite(boxes).all()) and not bool(torch.isnan(scores).any())):
                raise ModelOutputError(f"detection {i}: NaN or Inf box coordinates or NaN scores")
            if not self.keep_order and len(scores) > 1:
                order = torch.sort(scores, descending=True, stable=True).indices
                boxes, scores = boxes[order], scores[order]
            result.append((boxes, scores))
        return result


def short_shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(value).__name__


def as_detector(detector: Any) -> Any:
    """A detector as it is (anything with a ``detect(images)`` method), a model returning boxes through
    `CallableDetector`."""
    if callable(getattr(detector, "detect", None)):
        return detector
    if callable(detector):
        return CallableDetector(detector)
    raise InvalidParameterError(f"a detector must have .detect(images) or be a model returning boxes, got {type(detector).__name__}")


# --------------------------------------------------------------------------------------------------
# Adapters: detections -> outputs of a metric
# --------------------------------------------------------------------------------------------------


class TopBox(torch.nn.Module):
    """The detector's first box as the base model's output: ``[b, 4]``, ``(0, 0, 0, 0)`` = no box (the empty
    set), compared with the ``jaccard`` metric (1 − IoU).

    Args:
        detector: a `Detector`, or a model returning boxes (`CallableDetector`).
        min_score: boxes scoring below this are ignored (default: every box the detector returns).
    """

    metric = "jaccard"

    def __init__(self, detector: Any, min_score: float | None = None):
        super().__init__()
        self.detector = as_detector(detector)
        self.min_score = None if min_score is None else float(min_score)
        self.name = f"top-box({getattr(self.detector, 'name', type(self.detector).__name__)})"

    @staticmethod
    def stack(detections: list[tuple[torch.Tensor, torch.Tensor]], min_score: float | None = None) -> torch.Tensor:
        out = torch.zeros(len(detections), 4)
        for i, (boxes, scores) in enumerate(detections):
            if min_score is not None:
                boxes = boxes[scores >= min_score]
            if len(boxes):
                out[i] = boxes[0]
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stack(self.detector.detect(images), self.min_score)


class BoxSet(torch.nn.Module):
    """Every box scoring at least `min_score`, the `slots` best (by score), as the base model's output:
    ``[b, slots, 4]`` padded with empty boxes (0, 0, 0, 0), compared with the ``jaccard-match`` metric.

    Args:
        detector: a `Detector`, or a model returning boxes.
        slots: K, the most boxes kept (1 ≤ K ≤ MAX_SLOTS; the metric tries the K! pairings).
        min_score: the score a box needs.
    """

    metric = "jaccard-match"

    def __init__(self, detector: Any, slots: int = 3, min_score: float = 0.9):
        super().__init__()
        if isinstance(slots, bool) or not isinstance(slots, int) or not (1 <= slots <= MAX_SLOTS):
            raise InvalidParameterError(f"slots must be an integer in [1, {MAX_SLOTS}], got {slots!r}")
        self.detector = as_detector(detector)
        self.slots, self.min_score = slots, float(min_score)
        self.name = f"box-set({getattr(self.detector, 'name', type(self.detector).__name__)}, K={slots}, min_score={min_score:g})"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        detections = self.detector.detect(images)
        out = torch.zeros(len(detections), self.slots, 4)
        for i, (boxes, scores) in enumerate(detections):
            keep = scores >= self.min_score
            boxes, scores = boxes[keep], scores[keep]
            order = torch.sort(scores, descending=True, stable=True).indices[: self.slots]
            out[i, : len(order)] = boxes[order]
        return out

