"""How the PP-OCRv4 text-line recogniser behaves on the text-lines data set, clean and under Gaussian noise.

    python benchmarks/ocr_probe.py                       # everything below, a few minutes on 2 CPU cores
    python benchmarks/ocr_probe.py --lines 3 --copies 16 # a quick look

Measures, on `smoothgen.vision_data.load_text_lines()` (scikit-image's page.png lines, then rendered
standard-library sentences, all padded to one width) and `smoothgen.ocr.TextLineRecognizer`:

1. clean accuracy against the reference strings: lines read exactly, and the character error rate
   (total Levenshtein distance / total reference length), per part and overall, per `spaces` handling
   (with "drop", against the references without spaces);
2. milliseconds per copy of one `TextLineRecognizer.run` on a batch of --batch noisy copies of one line
   (the fastest of --repeats runs after a warm-up, on this machine's CPU);
3. for each σ of --sigmas (the ε_in a certificate at h = 1 would use is σ) and each of the first --lines
   lines, --copies noisy copies x + N(0, σ²I) and the Levenshtein distance (smoothgen's ``levenshtein``
   metric on character ids) of each copy's recognition to the clean line's recognition: median and max
   over all those copies, the share of copies read exactly as the clean line, and each line's median and
   max (center smoothing needs most copies of a line close together). The same noisy copies
   go through the model with clip=True and with clip=False (pixels clamped to [0, 1] or not), which is
   what decides `TextLineRecognizer`'s default; and each reading under the three `spaces` handlings
   of `TextLineRecognizer` ("keep": rapidocr's string verbatim; "normalize": runs collapsed, ends
   stripped; "drop": no spaces), all from the same model outputs.

Nothing is written; the output is the printed tables.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.025, 0.05, 0.1], help="noise levels (default: 0.025 0.05 0.1)")
    parser.add_argument("--lines", type=int, default=10, help="lines of the noise probe, from the first (default 10)")
    parser.add_argument("--copies", type=int, default=64, help="noisy copies per line and sigma (default 64)")
    parser.add_argument("--batch", type=int, default=64, help="copies per model call in the timing (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, the fastest is reported (default 3)")
    parser.add_argument("--count", type=int, default=60, help="rendered lines in the data set (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    return parser.parse_args(argv)


def clean_accuracy(recognizer, images: np.ndarray, strings: list[str], n_page: int) -> None:
    """Print exact-match accuracy and CER per part and `spaces` handling (recognizer: spaces="keep")."""
    from rapidfuzz.distance import Levenshtein

    from smoothgen.ocr import SPACES, drop_spaces, normalize_spaces

    start = time.perf_counter()
    raw = recognizer.run(torch.from_numpy(images))
    elapsed = time.perf_counter() - start
    post = {"keep": raw, "normalize": normalize_spaces(raw, recognizer.space_id), "drop": drop_spaces(raw, recognizer.space_id)}
    readings = {spaces: [recognizer.decode(ids) for ids in post[spaces]] for spaces in SPACES}
    references = {spaces: [s.replace(" ", "") if spaces == "drop" else s for s in strings] for spaces in SPACES}
    parts = {"page.png": slice(0, n_page), "rendered": slice(n_page, len(strings)), "all": slice(0, len(strings))}
    print(f"clean recognition of {len(strings)} lines [3, 48, {images.shape[-1]}]: {elapsed:.1f} s")
    print(f"{'spaces':10s} {'part':10s} {'lines':>5s} {'exact':>6s} {'exact %':>8s} {'CER %':>7s}")
    for spaces, predictions in readings.items():
        for name, part in parts.items():
            pred, ref = predictions[part], references[spaces][part]
            exact = sum(p == r for p, r in zip(pred, ref))
            errors = sum(Levenshtein.distance(p, r) for p, r in zip(pred, ref))
            cer = 100.0 * errors / max(1, sum(len(r) for r in ref))
            print(f"{spaces:10s} {name:10s} {len(ref):5d} {exact:6d} {100.0 * exact / len(ref):8.1f} {cer:7.2f}")
    for i, (p, r) in enumerate(zip(readings["normalize"], strings)):
        if p != r:
            print(f"  line {i:2d}: read {p!r}, is {r!r}")


def timing(recognizer, line: np.ndarray, batch: int, repeats: int, seed: int) -> None:
    """Print ms per copy of a batched run."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(line)[None].expand(batch, *line.shape)
    x = x + 0.05 * torch.randn(x.shape, generator=generator)
    recognizer.run(x[: min(batch, 8)])  # warm-up: ONNX Runtime's first call allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        recognizer.run(x)
        times.append(time.perf_counter() - start)
    best = min(times)
    print(
        f"batched recognition, batch {batch} of [3, 48, {line.shape[-1]}]: {1000.0 * best / batch:.1f} ms/copy "
        f"(fastest of {repeats}; all: {', '.join(f'{1000.0 * t / batch:.1f}' for t in times)}) "
        f"on {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    )


def noise_probe(recognizers: dict, images: np.ndarray, sigmas: list[float], lines: int, copies: int, seed: int) -> None:
    """Print median/max Levenshtein distance of noisy recognitions to the clean one, per sigma, clip and
    `spaces` handling (recognizers: spaces="keep"; the handlings post-process the same model outputs)."""
    from smoothgen.metrics import get_metric
    from smoothgen.ocr import drop_spaces, normalize_spaces

    metric = get_metric("levenshtein")
    space_id = next(iter(recognizers.values())).space_id
    post = {
        "keep": lambda ids: ids,
        "normalize": lambda ids: normalize_spaces(ids, space_id),
        "drop": lambda ids: drop_spaces(ids, space_id),
    }
    clean = {name: rec.run(torch.from_numpy(images[:lines])) for name, rec in recognizers.items()}
    print(f"noise probe: {copies} copies of each of the first {lines} lines; Levenshtein distance to the clean recognition")
    header = f"{'sigma':>6s} {'eps_in':>6s} {'clip':>5s} {'spaces':>9s} {'median':>6s} {'max':>4s} {'mean':>6s} {'exact %':>8s} {'s':>6s}"
    print(header + "   per line median/max")
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(seed)
        noisy = []
        for i in range(lines):
            x = torch.from_numpy(images[i])[None].expand(copies, *images.shape[1:])
            noisy.append(x + sigma * torch.randn(x.shape, generator=generator))
        for name, rec in recognizers.items():
            start = time.perf_counter()
            outputs = [rec.run(noisy[i]) for i in range(lines)]
            elapsed = time.perf_counter() - start
            for spaces, f in post.items():
                reference = f(clean[name])
                distances = [metric.distances(f(outputs[i]), [reference[i]])[:, 0].numpy() for i in range(lines)]
                d = np.concatenate(distances)
                print(
                    f"{sigma:6.3f} {sigma:6.3f} {name:>5s} {spaces:>9s} {np.median(d):6.1f} {d.max():4.0f} {d.mean():6.2f} "
                    f"{100.0 * np.mean(d == 0):8.1f} {elapsed:6.1f}   "
                    + " ".join(f"{np.median(x):g}/{x.max():g}" for x in distances),
                    flush=True,
                )


def main(argv=None) -> None:
    args = parse_args(argv)
    from smoothgen import vision_data
    from smoothgen.ocr import TextLineRecognizer

    started = time.perf_counter()
    images, strings = vision_data.load_text_lines(args.count)
    n_page = len(vision_data.PAGE_TEXT)
    print(f"text-lines: {images.shape[0]} lines ({n_page} from page.png, {images.shape[0] - n_page} rendered), shape {tuple(images.shape)}")
    # Verbatim readings; the probe applies each `spaces` handling itself, so that all come from one model run.
    recognizers = {
        "on": TextLineRecognizer(clip=True, spaces="keep", max_batch=args.batch),
        "off": TextLineRecognizer(clip=False, spaces="keep", max_batch=args.batch),
    }
    print(f"model: {recognizers['on'].name} {recognizers['on'].path.name} sha256 {recognizers['on'].sha256[:16]}…")
    clean_accuracy(recognizers["on"], images, strings, n_page)
    timing(recognizers["on"], images[0], args.batch, args.repeats, args.seed)
    noise_probe(recognizers, images, args.sigmas, min(args.lines, len(images)), args.copies, args.seed)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
