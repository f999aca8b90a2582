"""Real pretrained models for center smoothing, by name, and how to read their certificates.

`smoothgen center --model NAME` (and the API) know three models nobody here trained, all shipped inside
registry packages (nothing is downloaded at run time), each with the data it is meant for and a metric:

============  ============================================  ===========  =============  ========================
name          model                                         output       metric         data (--data)
============  ============================================  ===========  =============  ========================
mtcnn         facenet-pytorch's MTCNN face detector         top box      jaccard        faces (LFW crops)
opencv-haar   OpenCV's Haar frontal-face cascade            top box      jaccard        faces
rapidocr      rapidocr-onnxruntime's PP-OCRv4 recogniser    text         levenshtein    text-lines
============  ============================================  ===========  =============  ========================

A certificate in these metrics reads directly: a Jaccard distance ε_out means every box the smoothed
detector can give within ε_in keeps IoU ≥ 1 − ε_out with the certified one; a Levenshtein ε_out means at
most ⌊ε_out⌋ characters of the recognised line change. `readable` turns a certificate into those words.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from smoothgen.errors import InvalidParameterError

__all__ = ["DATASETS", "MODELS", "PretrainedModel", "load_dataset", "load_pretrained", "readable"]


@dataclass(frozen=True)
class PretrainedModel:
    """A named pretrained base model: how to build it, its output kind, metric and data."""

    name: str
    build: Callable[[], Any]
    kind: str  # "boxes" or "text"
    metric: str
    data: str
    description: str
    #: `smoothgen center`'s defaults for this model (options the user leaves out), sized so that the
    #: example finishes in minutes on 2 CPU cores and certifies something non-vacuous.
    defaults: dict = None  # type: ignore[assignment]


def _mtcnn() -> Any:
    from smoothgen.detection import MTCNNDetector, TopBox

    return TopBox(MTCNNDetector())


def _haar() -> Any:
    from smoothgen.detection import CascadeDetector, TopBox

    return TopBox(CascadeDetector("haar"))


def _rapidocr() -> Any:
    from smoothgen.ocr import load_rapidocr

    return load_rapidocr()


_FACE_DEFAULTS = {"num": 3, "eps_in": [0.05], "h": 1.0, "n": 5000, "m": 10_000, "delta": 0.05}
#: OCR: ~100 ms per noisy copy of a 1003-pixel line on 2 cores, so fewer samples: n = 600 passes the center
#: check only with Delta >= sqrt(ln(2/alpha1) / 2n) = 0.071, hence Delta = 0.1 (q = 0.94 at h = 1, m = 1200).
_TEXT_DEFAULTS = {"num": 1, "eps_in": [0.05], "h": 1.0, "n": 600, "m": 1200, "delta": 0.1}

MODELS: dict[str, PretrainedModel] = {
    "mtcnn": PretrainedModel("mtcnn", _mtcnn, "boxes", "jaccard", "faces",
                             "facenet-pytorch's pretrained MTCNN face detector, its largest face as a box", _FACE_DEFAULTS),
    "opencv-haar": PretrainedModel("opencv-haar", _haar, "boxes", "jaccard", "faces",
                                   "OpenCV's pretrained Haar frontal-face cascade, its largest face as a box", _FACE_DEFAULTS),
    "rapidocr": PretrainedModel("rapidocr", _rapidocr, "text", "levenshtein", "text-lines",
                                "rapidocr-onnxruntime's PP-OCRv4 text-line recogniser (ONNX Runtime)", _TEXT_DEFAULTS),
}


def _faces():
    from smoothgen.vision_data import load_faces

    return load_faces(), None


def _text_lines():
    from smoothgen.vision_data import load_text_lines

    return load_text_lines()


#: Named data sets (`--data NAME`): a function returning (images [N, C, H, W] float32 in [0, 1], strings or None).
DATASETS: dict[str, Callable[[], tuple[Any, Any]]] = {"faces": _faces, "text-lines": _text_lines}


def load_pretrained(name: str) -> tuple[Any, PretrainedModel]:
    """The named model, built (a callable of an image batch), and its description."""
    spec = MODELS.get(name)
    if spec is None:
        raise InvalidParameterError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(MODELS))}")
    return spec.build(), spec


def load_dataset(name: str) -> tuple[Any, Any]:
    """The named data set: (images [N, C, H, W] float32 in [0, 1] as a NumPy array, reference strings or None)."""
    loader = DATASETS.get(name)
    if loader is None:
        raise InvalidParameterError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return loader()


def _box(value: Any) -> list[float] | None:
    import torch

    box = [float(v) for v in torch.as_tensor(value).reshape(-1)[:4]]
    return box if box[2] > box[0] and box[3] > box[1] else None


def readable(kind: str, certificate: Any, clean_output: Any, decode: Callable[[Any], str] | None = None) -> dict[str, Any]:
    """What a certificate guarantees, in the output's own units, for a results record.

    Args:
        kind: "boxes" (top-box detector, jaccard) or "text" (recogniser, levenshtein).
        certificate: the `CenterCertificate`.
        clean_output: the base model's output on the clean input (one box [4] / one id sequence).
        decode: id sequence → string (text only).

    Returns:
        boxes: clean_box and smoothed_box ([x1, y1, x2, y2] or None for no box), iou_guaranteed = 1 − ε_out
        (None when abstaining; 0 when ε_out ≥ 1 says nothing). text: clean_text, smoothed_text,
        max_changed_characters = ⌊ε_out⌋ and changed_share = that over the clean line's length.
    """
    eps = certificate.eps_out
    certified = not certificate.abstained and math.isfinite(eps)
    if kind == "boxes":
        return {
            "clean_box": _box(clean_output),
            "smoothed_box": _box(certificate.center),
            "iou_guaranteed": max(0.0, 1.0 - eps) if certified else None,
        }
    if kind == "text":
        clean = decode(clean_output)
        smoothed = decode(certificate.center)
        changed = math.floor(eps + 1e-9) if certified else None
        return {
            "clean_text": clean,
            "smoothed_text": smoothed,
            "max_changed_characters": changed,
            "changed_share": None if changed is None else changed / max(len(clean), 1),
        }
    raise InvalidParameterError(f"kind must be 'boxes' or 'text', got {kind!r}")
