"""Offline image data sets: scikit-image's photos and scans, and lines of text rendered with a shipped font.

Nothing here downloads anything: every image comes from a file an installed package ships
(scikit-image's ``data`` folder, matplotlib's DejaVu fonts) or is rendered from the Python standard
library's own docstrings. All images are float32 arrays, channels first, pixels in [0, 1].

Text lines (the ``--data text-lines`` set, for `smoothgen.ocr.TextLineRecognizer`):

- `page_lines`: the text lines of scikit-image's ``page.png``, a real scanned book page with uneven
  illumination, cut out by a horizontal projection profile and rescaled to height 48, with reference
  transcriptions (`PAGE_TEXT`, read by eye).
- `rendered_lines`: sentences of the standard library's docstrings rendered black on white with DejaVu Sans.
- `load_text_lines`: both, padded to one width, with their strings.

Each set is [N, 3, 48, W] with one W per set: a line narrower than W is padded on the right with
mid-grey, 0.5 (`PAD_VALUE`). That is the value the PP-OCRv4 recogniser pads its own batches with (0
after its normalisation (v − 0.5)/0.5, rapidocr's and PaddleOCR's ``resize_norm_img``), so a padded
clean line reads exactly as rapidocr reads that line in a batch with a line of width W. Padding with
white instead is an edge the model reads into the text: measured on `load_text_lines` (width 1003), 45
of the 60 rendered lines and 4 of the 7 page lines were then read exactly instead of 57 and 6 (spaces
dropped, "histogram of grey values:" read "histogramofgreyvalues:", trailing spaces added).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.validate import check_count

#: Height of every text line (the PP-OCRv4 recogniser's input height, smoothgen.ocr.INPUT_HEIGHT).
LINE_HEIGHT = 48

#: What the lines of `page_lines` say, top to bottom, read by eye from page.png (rapidocr's own full
#: pipeline, RapidOCR(), finds only five of these seven lines and drops the spaces after full stops).
#: The seventh line sits on a half-cut line of small print at the bottom edge of the scan, which its
#: crop keeps (it is part of the real data).
PAGE_TEXT: tuple[str, ...] = (
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "background. These markers are pixels that we can label",
    "unambiguously as either object or background. Here,",
    "the markers are found at the two extreme parts of the",
    "histogram of grey values:",
    ">>> markers = np.zeros_like(coins)",
)

#: Standard-library modules whose docstrings `rendered_lines` takes its sentences from.
DOC_MODULES: tuple[str, ...] = (
    "abc", "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools", "gzip", "hashlib",
    "heapq", "inspect", "itertools", "json", "logging", "math", "operator", "os", "pathlib", "pprint",
    "random", "shutil", "statistics", "string", "tarfile", "textwrap", "typing", "uuid", "zipfile",
)

#: Font size (pixels) of `rendered_lines`: ascent plus descent fill about 30 of the 48 rows. The clean
#: accuracy of the recogniser was the same at 26, 30 and 34 px (92 of 100 lines exact); 26 gives the
#: narrowest lines, and the model's cost grows with the width.
FONT_SIZE = 26

#: What every line is padded with on the right: mid-grey, the recogniser's own padding (see the module docstring).
PAD_VALUE = 0.5


# ---------------------------------------------------------------------------------------------- files
def _package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise InvalidInputError(f"data file {relative} of the {package} package is not installed here (pip install {package})")


def skimage_image_path(name: str) -> Path:
    """The path of an image in scikit-image's shipped data folder (e.g. "page.png").

    Raises:
        InvalidInputError: scikit-image is not installed, or it does not ship that file.
    """
    return _package_file("skimage", f"data/{name}")


def dejavu_font_path(name: str = "DejaVuSans.ttf") -> Path:
    """The path of a DejaVu font that matplotlib ships (mpl-data/fonts/ttf).

    Raises:
        InvalidInputError: matplotlib is not installed, or it does not ship that font.
    """
    return _package_file("matplotlib", f"mpl-data/fonts/ttf/{name}")


def _read_gray(path: Path) -> np.ndarray:
    """An image file as float32 gray levels in [0, 1] [H, W]."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- stacking
def _stack(lines: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Gray lines [48, w_i] padded on the right with `PAD_VALUE` to one width and replicated to 3 channels.

    Shapes:
        lines: N arrays [48, w_i] -> [N, 3, 48, W], W = width or max w_i.
    """
    width = max(line.shape[1] for line in lines) if width is None else width
    out = np.full((len(lines), LINE_HEIGHT, width), PAD_VALUE, dtype=np.float32)
    for i, line in enumerate(lines):
        out[i, :, : line.shape[1]] = line
    return np.ascontiguousarray(np.repeat(out[:, None], 3, axis=1))


def _repad(images: np.ndarray, width: int) -> np.ndarray:
    """A set [N, 3, 48, W] widened to `width` with `PAD_VALUE`."""
    if images.shape[-1] >= width:
        return images
    extra = np.full((*images.shape[:-1], width - images.shape[-1]), PAD_VALUE, dtype=images.dtype)
    return np.concatenate([images, extra], axis=-1)


# ---------------------------------------------------------------------------------------------- page.png
def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def segment_lines(
    gray: np.ndarray,
    *,
    ink_level: float = 0.75,
    row_fraction: float = 0.05,
    min_rows: int = 6,
    pad: int = 3,
) -> list[np.ndarray]:
    """Text lines of a scanned page by horizontal projection, as crops of its real pixels at height 48.

    1. Flatten the illumination for the segmentation only: background = Gaussian blur (σ 5) of a 15×15
       grey closing (which erases dark strokes), ink = pixels darker than `ink_level` × background.
    2. Text rows: rows with ink in more than `row_fraction` of the columns. Runs of text rows shorter
       than `min_rows` (ruled lines, stray specks) are dropped.
    3. Each run, widened by `pad` rows up and down (ascenders, descenders) and cut to the columns with
       ink (± 3), is a line; its original pixels are resized to height 48 (OpenCV's bicubic, aspect
       kept) and clipped to [0, 1]. The resampling matters: on PIL's bicubic (a = −0.5 instead of
       OpenCV's −0.75) the recogniser dropped the spaces after full stops, 3 of 7 lines exact instead of 6.

    Args:
        gray: the page, gray levels in [0, 1].

    Returns:
        the lines, [48, w_i] crops, top to bottom.

    Shapes:
        gray: [H, W].
    """
    import cv2
    from scipy import ndimage

    background = ndimage.gaussian_filter(ndimage.grey_closing(gray, size=(15, 15)), 5)
    ink = gray < ink_level * np.maximum(background, 1e-3)
    height, width = gray.shape
    text_rows = ink.sum(axis=1) > max(3.0, row_fraction * width)
    lines = []
    for start, end in _runs(text_rows):
        if end - start < min_rows:
            continue
        y0, y1 = max(start - pad, 0), min(end + pad, height)
        columns = np.nonzero(ink[start:end].any(axis=0))[0]
        x0, x1 = max(int(columns[0]) - 3, 0), min(int(columns[-1]) + 4, width)
        crop = gray[y0:y1, x0:x1]
        new_width = max(1, int(round(crop.shape[1] * LINE_HEIGHT / crop.shape[0])))
        line = cv2.resize(crop, (new_width, LINE_HEIGHT), interpolation=cv2.INTER_CUBIC)
        lines.append(np.clip(line, 0.0, 1.0).astype(np.float32))
    return lines


@functools.lru_cache(maxsize=1)
def _page_lines() -> tuple[np.ndarray, tuple[str, ...] | None]:
    lines = segment_lines(_read_gray(skimage_image_path("page.png")))
    if not lines:
        raise InvalidInputError("no text lines found in scikit-image's page.png")
    # The transcription belongs to this segmentation; another scikit-image's page.png (or a change of the
    # parameters) that cuts another number of lines gets no reference strings rather than wrong ones.
    reference = PAGE_TEXT if len(lines) == len(PAGE_TEXT) else None
    return _stack(lines), reference


def page_lines() -> tuple[np.ndarray, list[str] | None]:
    """The text lines of scikit-image's page.png (a scanned page), with their transcriptions.

    scikit-image's text.png (handwritten formulas on a slanted board) yields no usable lines and is not used.

    Returns:
        (images, strings): images [7, 3, 48, W] float32 in [0, 1], padded on the right with `PAD_VALUE`;
        strings: `PAGE_TEXT` as a list, or None if the segmentation found another number of
        lines (a different page.png).

    Raises:
        InvalidInputError: scikit-image (or its page.png) is not installed.
    """
    images, reference = _page_lines()
    return images.copy(), (list(reference) if reference is not None else None)


# ---------------------------------------------------------------------------------------------- rendered
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")


def _doc_paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring: blank-line separated blocks, without indented blocks (code,
    argument lists) and doctests, each joined into one line."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", doc):
        lines = block.splitlines()
        if not lines or any(line.startswith((" ", "\t")) or ">>>" in line for line in lines):
            continue
        paragraphs.append(" ".join(line.strip() for line in lines))
    return paragraphs


def docstring_sentences(modules: Sequence[str] = DOC_MODULES, min_chars: int = 20, max_chars: int = 50) -> list[str]:
    """Sentences of `min_chars`..`max_chars` printable ASCII characters (ending in . ! or ?, without
    reStructuredText backquotes) from the docstrings of these standard-library modules and of their public functions and classes, in a fixed order
    (module order, then sorted attribute names), without duplicates.

    Which sentences come out depends on the Python version (docstrings change between releases), not
    on anything else.
    """
    sentences: dict[str, None] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        objects = [module]
        for attr in sorted(vars(module)):
            obj = vars(module)[attr]
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                if getattr(obj, "__module__", None) == module.__name__:
                    objects.append(obj)
        for obj in objects:
            with warnings.catch_warnings():  # typing.io and typing.re warn when their docstrings are read
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = inspect.getdoc(obj)
            if not doc:
                continue
            for paragraph in _doc_paragraphs(doc):
                for sentence in _SENTENCE_END.split(paragraph):
                    sentence = " ".join(sentence.split())
                    if (
                        min_chars <= len(sentence) <= max_chars
                        and _PRINTABLE.match(sentence)
                        and sentence[-1] in ".!?"
                        and "`" not in sentence  # reStructuredText markup, not prose
                    ):
                        sentences.setdefault(sentence, None)
    return list(sentences)


def render_line(text: str, font_path: str | Path | None = None, font_size: int = FONT_SIZE, margin: int = 6) -> np.ndarray:
    """One line of text, black on white, 48 pixels high (PIL + FreeType: the same pixels on every run
    with the same Pillow and FreeType).

    The font's ascent + descent box is centred vertically; `margin` white columns on either side.

    Shapes:
        -> [48, w] float32 in [0, 1].
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path or dejavu_font_path()), font_size)
    ascent, descent = font.getmetrics()
    right = int(font.getbbox(text)[2])
    image = Image.new("L", (right + 2 * margin, LINE_HEIGHT), 255)
    ImageDraw.Draw(image).text((margin, (LINE_HEIGHT - ascent - descent) // 2), text, font=font, fill=0)
    return np.asarray(image, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _rendered_lines(count: int, font_size: int, font: str, min_chars: int, max_chars: int) -> tuple[np.ndarray, tuple[str, ...]]:
    candidates = docstring_sentences(min_chars=min_chars, max_chars=max_chars)
    # A fixed pseudo-random order (SHA-256 of each sentence), so that the first `count` mix all modules.
    candidates.sort(key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    if len(candidates) < count:
        raise InvalidParameterError(f"count={count}: the docstrings give only {len(candidates)} sentences of {min_chars}-{max_chars} characters")
    strings = tuple(candidates[:count])
    font_path = dejavu_font_path(font)
    lines = [render_line(s, font_path, font_size) for s in strings]
    return _stack(lines), strings


def rendered_lines(
    count: int = 60,
    *,
    font_size: int = FONT_SIZE,
    font: str = "DejaVuSans.ttf",
    min_chars: int = 20,
    max_chars: int = 50,
) -> tuple[np.ndarray, list[str]]:
    """Sentences of the standard library's docstrings rendered black on white, with their strings.

    The sentences are `docstring_sentences` (printable ASCII, `min_chars`..`max_chars` characters)
    taken in the order of their SHA-256, the first `count` of them; each is rendered with `render_line`
    (matplotlib's DejaVu Sans, `font_size` px, black on white) and padded on the right with `PAD_VALUE`
    to the widest.

    Returns:
        (images [count, 3, 48, W] float32 in [0, 1], the count strings).

    Raises:
        InvalidParameterError: count < 1, or more than the docstrings give.
        InvalidInputError: matplotlib (the font) is not installed.
    """
    count = check_count(count, "count")
    font_size = check_count(font_size, "font_size")
    images, strings = _rendered_lines(count, font_size, font, check_count(min_chars, "min_chars"), check_count(max_chars, "max_chars"))
    return images.copy(), list(strings)


def load_text_lines(count: int = 60) -> tuple[np.ndarray, list[str]]:
    """The ``text-lines`` data set: `page_lines` then `rendered_lines(count)`, padded to one width.

    Returns:
        (images [7 + count, 3, 48, W] float32 in [0, 1], their strings). The page lines come first.

    Raises:
        InvalidInputError: page.png's segmentation has no transcription (another scikit-image), or a
            shipped file is missing.
    """
    page, page_text = page_lines()
    if page_text is None:
        raise InvalidInputError("scikit-image's page.png was cut into another number of lines than PAGE_TEXT transcribes")
    rendered, rendered_text = rendered_lines(count)
    width = max(page.shape[-1], rendered.shape[-1])
    images = np.concatenate([_repad(page, width), _repad(rendered, width)])
    return images, page_text + rendered_text


# --------------------------------------------------------------------------------------------------
# Faces: scikit-image's Labeled Faces in the Wild crops
# --------------------------------------------------------------------------------------------------

#: Side of the `faces` set's images: the 25 x 25 LFW crops upscaled 4x, large enough for MTCNN's pyramid
#: (at 64 x 64 it lost the face in half of the copies noisy at sigma 0.1; 19 of the first 20 crops are
#: found at 100 x 100).
FACE_SIZE = 100
#: lfw_subset.npy holds 200 crops: the first 100 are faces, the last 100 are not.
FACE_COUNT = 100


def load_faces(size: int = FACE_SIZE, count: int = FACE_COUNT) -> np.ndarray:
    """The real face crops of scikit-image's lfw_subset.npy (Labeled Faces in the Wild), upscaled.

    Args:
        size: output side in pixels (bicubic, clipped to [0, 1]).
        count: how many of the 100 faces (the first ones).

    Returns:
        float32 [count, 1, size, size] gray images in [0, 1].
    """
    import torch

    if not (isinstance(count, int) and 1 <= count <= FACE_COUNT):
        raise InvalidParameterError(f"count must be an integer in [1, {FACE_COUNT}], got {count!r}")
    if not (isinstance(size, int) and size >= 25):
        raise InvalidParameterError(f"size must be an integer >= 25 pixels, got {size!r}")
    crops = np.load(_package_file("skimage", "data/lfw_subset.npy"))[:count].astype(np.float32)
    faces = torch.from_numpy(crops)[:, None]
    up = torch.nn.functional.interpolate(faces, size=(size, size), mode="bicubic", align_corners=False)
    return up.clamp_(0.0, 1.0).numpy()
