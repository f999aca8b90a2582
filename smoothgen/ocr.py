"""Text-line recognition as a base model for center smoothing: rapidocr-onnxruntime's PP-OCRv4 recogniser, batched.

`TextLineRecognizer` maps a batch of images of one text line, [b, 3, H, W] (or [b, 1, H, W] gray) with
pixels in [0, 1], to b sequences of character ids: the base model f of
`CenterSmoother(f, sigma, metric="levenshtein")` (docs/theory.md §2, Levenshtein distance is a metric,
γ = 1). The certificate then says that the smoothed transcription moves by at most ε_out character edits
for every ℓ2 perturbation of the line's pixels of norm ≤ ε_in.

The model is the PP-OCRv4 recognition network (SVTR-LCNet with a CTC head) that the rapidocr-onnxruntime
wheel ships as ``rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx``. It is found in the installed
package, never downloaded; install it with ``pip install --no-deps rapidocr-onnxruntime==1.4.4``. Only
onnxruntime is needed besides (``smoothgen[onnx]``); the wheel's other dependencies (opencv, shapely,
pyclipper, PyYAML) serve rapidocr's detection pipeline, which this module does not use.

What f computes, for the whole batch at once (steps 1-4 are what rapidocr's own ``TextRecognizer``
computes for one line alone: its ``resize_norm_img`` and ``CTCLabelDecode``):

1. (``clip=True``) pixels clamped to [0, 1]: noisy copies leave the range, and a clean image never does.
   Clamping is a fixed, deterministic part of f, so the certificate covers the clamped model.
2. Gray inputs replicated to 3 channels; RGB inputs flipped to BGR (rapidocr feeds cv2's BGR images).
3. The [0, 1] pixels brought to rapidocr's 0..255 scale, resized to height 48 keeping the aspect ratio
   (bilinear, half-pixel centers, as cv2.INTER_LINEAR; skipped when the line is already 48 high and keeps
   its width), then ``(v / 255 − 0.5) / 0.5``, and padded on the right with 0 (mid-gray after
   normalisation) to ``int(48 · max(320/48, W/H))``, rapidocr's minimum width of 320.
4. One ONNX Runtime call (CPU provider, default intra-op threads) per chunk of `max_batch` copies;
   argmax over the classes at each of the W/8 time steps; greedy CTC decoding: repeats collapsed, the
   blank (class 0) dropped.
5. Spaces (``spaces=``): "normalize" (the default) collapses runs of ASCII spaces into one and drops
   leading and trailing ones; "drop" removes every space; "keep" leaves rapidocr's reading verbatim.
   The model reads Gaussian noise on a line's padding as spaces: at σ = 0.025 the noisy copies of
   "Region-based segmentation", padded to the text-lines width, end in 5 to 9 spaces, and the line's
   median edit distance to its clean reading is 7 verbatim and 0 normalised (benchmarks/ocr_probe.py).
   Noise also makes it drop spaces between words of short lines ("Setanew default context."), which
   only "drop" is blind to, at the price of certifying the text without its word boundaries. Either
   is a fixed, deterministic part of f, as whitespace normalisation is in the usual OCR evaluations.

Steps 1-4 give exactly rapidocr's strings (tests/test_ocr.py checks it on the text-lines set); step 5
differs from them only in spaces.

The character ids are the model's class indices: 0 is the CTC blank, 1..6623 the characters of the
dictionary stored in the ONNX file's metadata (key ``character``, one per line; rapidocr reads it the
same way), and 6624 the ASCII space, which the dictionary lacks and rapidocr appends.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothgen.engine.runtime.base import Runtime
from smoothgen.errors import (
    BackendUnavailableError,
    InvalidInputError,
    InvalidParameterError,
    ModelLoadError,
    ModelOutputError,
    first_line,
)
from smoothgen.validate import check_count, check_image_batch

#: The installed package that ships the model.
RAPIDOCR_PACKAGE = "rapidocr_onnxruntime"
#: The recognition model inside that package.
RAPIDOCR_REC_MODEL = "models/ch_PP-OCRv4_rec_infer.onnx"
#: How to install the package (its dependencies are not needed here).
RAPIDOCR_INSTALL = "pip install --no-deps rapidocr-onnxruntime==1.4.4"

#: The height every line is resized to (rapidocr's rec_img_shape [3, 48, 320]).
INPUT_HEIGHT = 48
#: The narrowest input the model is given: shorter lines are padded to it (rapidocr's rec_img_shape).
MIN_WIDTH = 320
#: The CTC blank class.
BLANK = 0


def rapidocr_model_path(package: str = RAPIDOCR_PACKAGE, model: str = RAPIDOCR_REC_MODEL) -> Path:
    """The recognition ONNX file inside the installed rapidocr-onnxruntime package (found with
    importlib.util.find_spec, which does not import the package and its cv2 pipeline).

    Raises:
        ModelLoadError: the package is not installed, or it lacks the model file.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(f"the OCR model needs the {package} package: {RAPIDOCR_INSTALL}")
    for location in locations:
        path = Path(location) / model
        if path.is_file():
            return path
    raise ModelLoadError(f"{package} is installed at {locations[0]} but has no {model}: {RAPIDOCR_INSTALL}")


def ctc_greedy_decode(class_ids: np.ndarray) -> list[np.ndarray]:
    """Greedy CTC decoding of per-time-step class ids: repeats collapsed, then blanks (class 0) dropped.

    The same selection as rapidocr's ``CTCLabelDecode.decode(..., is_remove_duplicate=True)``, for the
    whole batch at once.

    Shapes:
        class_ids: [b, T] integers -> b 1-D int64 arrays (lengths ≤ T).
    """
    ids = np.asarray(class_ids)
    if ids.ndim != 2:
        raise InvalidInputError(f"CTC decoding takes class ids [batch, time], got {ids.ndim}-d")
    keep = ids != BLANK
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    flat = ids[keep].astype(np.int64)
    bounds = np.cumsum(keep.sum(axis=1))[:-1]
    return [row.copy() for row in np.split(flat, bounds)]


#: The space handling `TextLineRecognizer` offers (step 5 of the module docstring).
SPACES = ("normalize", "drop", "keep")


def drop_spaces(sequences: list[np.ndarray], space_id: int) -> list[np.ndarray]:
    """Every `space_id` removed from each sequence.

    Shapes:
        sequences: b 1-D integer arrays -> b 1-D int64 arrays.
    """
    return [np.asarray(seq, dtype=np.int64)[np.asarray(seq) != space_id] for seq in sequences]


def normalize_spaces(sequences: list[np.ndarray], space_id: int) -> list[np.ndarray]:
    """Runs of `space_id` collapsed into one, and leading and trailing ones dropped, in each sequence
    (what ``" ".join(w for w in text.split(" ") if w)`` does to a string).

    Shapes:
        sequences: b 1-D integer arrays -> b 1-D int64 arrays.
    """
    if not sequences:
        return []
    lengths = np.array([len(seq) for seq in sequences])
    flat = np.concatenate([np.asarray(seq, dtype=np.int64) for seq in sequences])
    row = np.repeat(np.arange(len(sequences)), lengths)
    space = flat == space_id
    # A space whose predecessor in the same sequence is a space goes (collapse) ...
    same_row = np.concatenate([[False], row[1:] == row[:-1]])
    keep = ~(space & np.concatenate([[False], space[:-1]]) & same_row)
    flat, row, space = flat[keep], row[keep], space[keep]
    # ... then a space first or last in its sequence (at most one at each end now).
    first = np.concatenate([[True], row[1:] != row[:-1]])
    last = np.concatenate([row[1:] != row[:-1], [True]])
    keep = ~(space & (first | last))
    flat, row = flat[keep], row[keep]
    bounds = np.cumsum(np.bincount(row, minlength=len(sequences)))[:-1]
    return [part.copy() for part in np.split(flat, bounds)]


class TextLineRecognizer(Runtime):
    """PP-OCRv4 text-line recognition (rapidocr-onnxruntime's ONNX model) as a smoothgen Runtime.

    Calling it (``run`` or ``__call__``) on a batch [b, C, H, W] returns b 1-D int64 arrays of
    character ids, the outputs the ``levenshtein`` metric compares; `decode` turns one into a string.
    All copies of a batch share one size, so a batch is resized at most once and runs through the
    model in one call per `max_batch` copies; see the module docstring for the exact computation.

    Args:
        path: the recognition .onnx file (default: the one rapidocr-onnxruntime ships,
            `rapidocr_model_path`). Its metadata must hold the character dictionary (key ``character``).
        clip: clamp pixels to [0, 1] before anything else (see the module docstring). The default, True,
            is what benchmarks/ocr_probe.py measured to keep noisy readings closer to the clean one: on
            10 lines × 64 copies, spaces normalised, the mean edit distance was 1.02 / 1.71 / 2.59 at
            σ = 0.025 / 0.05 / 0.1 with clipping and 1.05 / 2.04 / 2.75 without, and 70 / 55 / 27 % of
            copies read exactly as the clean line instead of 68 / 50 / 25 %.
        max_batch: copies per ONNX Runtime call; larger batches are split (bounds memory: one copy of a
            1000-pixel-wide line needs about 3.4 MB of class probabilities).
        spaces: "normalize" (collapse runs of spaces, strip the ends: `normalize_spaces`), "drop" (no
            spaces at all: `drop_spaces`) or "keep" (rapidocr's strings verbatim); step 5 of the module
            docstring. The default, "normalize", keeps the word boundaries that clean lines are read
            with and removes the spaces noise adds at the ends (benchmarks/ocr_probe.py).
        channel_order: "rgb" (the default; flipped to BGR for the model) or "bgr" (passed as is).
        threads: ONNX Runtime intra-op threads (None: ONNX Runtime's default, one per physical core).

    Attributes:
        name: "rapidocr:PP-OCRv4-rec", the model's name in records.
        path: the ONNX file.
        input_height: 48, the height lines are resized to.
        min_width: 320, the narrowest model input.
        characters: the class names by id: "" for the blank (0), the dictionary, then " ".
        space_id: the id of the ASCII space (the last class).
        num_classes: len(characters), the model's output size (6625).
        sha256: the ONNX file's SHA-256 (hex; computed on first use).

    Raises:
        ModelLoadError: rapidocr-onnxruntime missing, an unreadable model file, a model without its
            dictionary, or a dictionary that does not match the model's output size.
        BackendUnavailableError: onnxruntime is not installed.
        InvalidParameterError: a bad clip, spaces, max_batch, channel_order or threads.
    """

    backend = "onnxruntime"
    name = "rapidocr:PP-OCRv4-rec"
    input_height = INPUT_HEIGHT
    min_width = MIN_WIDTH

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clip: bool = True,
        spaces: str = "normalize",
        max_batch: int = 64,
        channel_order: str = "rgb",
        threads: int | None = None,
    ):
        if not isinstance(clip, bool):
            raise InvalidParameterError(f"clip must be True or False, got {clip!r}")
        if not isinstance(spaces, str) or spaces not in SPACES:
            raise InvalidParameterError(f"spaces must be one of {', '.join(SPACES)}, got {spaces!r}")
        if channel_order not in ("rgb", "bgr"):
            raise InvalidParameterError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.clip = clip
        self.spaces = spaces
        self.channel_order = channel_order
        self.max_batch = check_count(max_batch, "max_batch")
        self.path = Path(path) if path is not None else rapidocr_model_path()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"the OCR model needs onnxruntime: pip install onnxruntime ({exc})") from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = check_count(threads, "threads")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for missing and unreadable files
            raise ModelLoadError(f"cannot load OCR model {self.path}: {first_line(exc)}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"OCR model {self.path} must have one input and one output, has {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if "character" not in meta:
            raise ModelLoadError(f"OCR model {self.path} has no character dictionary in its metadata (key 'character')")
        # rapidocr's CTCLabelDecode: blank first, the dictionary (str.splitlines of the metadata), space last.
        self.characters: tuple[str, ...] = ("", *meta["character"].splitlines(), " ")
        self.space_id = len(self.characters) - 1
        self.num_classes = len(self.characters)
        classes = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(classes, int) and classes != self.num_classes:
            raise ModelLoadError(
                f"OCR model {self.path} predicts {classes} classes but its dictionary gives {self.num_classes}"
            )
        self._ids = {c: i for i, c in enumerate(self.characters) if i != BLANK}
        self._sha256: str | None = None
        self.device = torch.device("cpu")
        self.input_dtype = torch.float32

    # ------------------------------------------------------------------ attributes
    @property
    def sha256(self) -> str:
        """SHA-256 of the ONNX file (hex), read once."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def __repr__(self) -> str:
        return (
            f"TextLineRecognizer({str(self.path)!r}, clip={self.clip}, spaces={self.spaces!r}, "
            f"max_batch={self.max_batch})"
        )

    # ------------------------------------------------------------------ the model
    def model_width(self, height: int, width: int) -> tuple[int, int]:
        """(resized width, padded width) of an H×W line: rapidocr's ``resize_norm_img`` for one line.

        The padded width is ``int(48 · max(320/48, W/H))`` and the line is resized to
        ``min(ceil(48 · W/H), padded width)`` columns, with rapidocr's own float expressions.
        """
        ratio = width / float(height)
        padded = int(self.input_height * max(self.min_width / self.input_height, width * 1.0 / height))
        resized = int(math.ceil(self.input_height * ratio))
        return min(resized, padded), padded

    def preprocess(self, images: Any) -> np.ndarray:
        """The model input for a batch of lines: steps 1-3 of the module docstring.

        Shapes:
            images: [b, 3, H, W] or [b, 1, H, W], pixels in [0, 1] -> [b, 3, 48, W'] float32, where
            W' = `model_width`(H, W)[1].
        """
        return self._prepare(self._check(images))

    def probabilities(self, images: Any) -> np.ndarray:
        """The model's per-time-step class probabilities (softmax) for a batch (one call per max_batch copies).

        Shapes:
            images: [b, C, H, W] -> [b, T, num_classes] float32, T = W'/8.
        """
        x = self._check(images)
        if len(x) == 0:
            return np.zeros((0, 0, self.num_classes), dtype=np.float32)
        return np.concatenate([self._session_run(self._prepare(x[s : s + self.max_batch])) for s in range(0, len(x), self.max_batch)])

    def run(self, batch: Any) -> list[np.ndarray]:
        """Character ids of each line: argmax class per time step, greedy CTC decoding, then the
        `spaces` handling (`postprocess`).

        The batch is checked once, then preprocessed and run in chunks of `max_batch` copies (so memory
        stays bounded whatever b is); the result does not depend on the chunking.

        Shapes:
            batch: [b, 3, H, W] or [b, 1, H, W], pixels in [0, 1] (noisy copies may leave the range)
            -> b 1-D int64 arrays of ids in 1..num_classes − 1.

        Raises:
            InvalidInputError: not a floating array of rank 4 with 1 or 3 channels and H, W ≥ 1, or
                NaN/Inf pixels.
        """
        x = self._check(batch)
        ids: list[np.ndarray] = []
        for start in range(0, len(x), self.max_batch):
            probs = self._session_run(self._prepare(x[start : start + self.max_batch]))
            ids.extend(ctc_greedy_decode(probs.argmax(axis=2)))
        return self.postprocess(ids)

    def postprocess(self, ids: list[np.ndarray]) -> list[np.ndarray]:
        """Step 5 of the module docstring (the `spaces` handling) on decoded id sequences."""
        if self.spaces == "normalize":
            return normalize_spaces(ids, self.space_id)
        if self.spaces == "drop":
            return drop_spaces(ids, self.space_id)
        return ids

    def recognize(self, images: Any) -> list[str]:
        """The text of each line (`run`, then `decode`).

        Shapes:
            images: [b, C, H, W] -> b strings.
        """
        return [self.decode(ids) for ids in self.run(images)]

    # ------------------------------------------------------------------ ids <-> text
    def decode(self, ids: Any) -> str:
        """The string of a sequence of character ids (the blank, 0, decodes to nothing).

        Raises:
            InvalidInputError: not a 1-D integer sequence, or an id outside 0..num_classes − 1.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
        if arr.size == 0:
            return ""
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise InvalidInputError(f"decode takes a 1-D sequence of integer character ids, got {arr.ndim}-d {arr.dtype}")
        if int(arr.min()) < 0 or int(arr.max()) >= self.num_classes:
            raise InvalidInputError(f"character ids must lie in 0..{self.num_classes - 1}, got {int(arr.min())}..{int(arr.max())}")
        return "".join(self.characters[i] for i in arr.tolist())

    def encode(self, text: str) -> np.ndarray:
        """The character ids of a string (e.g. a reference transcription, to measure Levenshtein
        distances in the model's own units).

        Raises:
            InvalidInputError: not a str, or a character the dictionary lacks.
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"encode takes a str, got {type(text).__name__}")
        missing = sorted({c for c in text if c not in self._ids})
        if missing:
            raise InvalidInputError(f"characters {''.join(missing)!r} are not in the OCR model's dictionary")
        return np.array([self._ids[c] for c in text], dtype=np.int64)

    # ------------------------------------------------------------------ internals
    def _check(self, images: Any) -> torch.Tensor:
        """The batch as a CPU float32 tensor [b, C, H, W], or InvalidInputError saying what is wrong."""
        return check_image_batch(images, "OCR input", "lines").cpu()

    def _prepare(self, x: torch.Tensor) -> np.ndarray:
        """`preprocess` of a checked batch (`_check`)."""
        b, _, h, w = x.shape
        if self.clip:
            x = x.clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(b, 3, h, w)
        elif self.channel_order == "rgb":
            x = x.flip(1)
        resized_w, padded_w = self.model_width(h, w)
        v = x * 255.0  # rapidocr's pixel scale: its resize and normalisation run on 0..255 values
        if (h, w) != (self.input_height, resized_w) and b:
            v = torch.nn.functional.interpolate(
                v, size=(self.input_height, resized_w), mode="bilinear", align_corners=False, antialias=False
            )
        v = (v / 255.0 - 0.5) / 0.5
        out = np.zeros((b, 3, self.input_height, padded_w), dtype=np.float32)
        out[..., :resized_w] = v.numpy()
        return out

    def _session_run(self, model_input: np.ndarray) -> np.ndarray:
        try:
            (probs,) = self.session.run([self.output_name], {self.input_name: model_input})
        except Exception as exc:  # onnxruntime's own error types (out of memory, a shape it refuses)
            raise ModelOutputError(f"OCR model {self.path} failed on a batch {model_input.shape}: {first_line(exc)}") from exc
        return probs


def load_rapidocr(**kwargs: Any) -> TextLineRecognizer:
    """The PP-OCRv4 recogniser that rapidocr-onnxruntime ships (``--model rapidocr``).

    Args:
        **kwargs: passed to `TextLineRecognizer` (clip, spaces, max_batch, channel_order, threads).

    Raises:
        ModelLoadError: rapidocr-onnxruntime is not installed (the message says how to install it).
    """
    return TextLineRecognizer(**kwargs)
