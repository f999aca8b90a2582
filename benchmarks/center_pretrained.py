"""Center smoothing on real pretrained models (issue 22): MTCNN face boxes (Jaccard) and PP-OCRv4 text lines
(Levenshtein), beside Kumar & Goldstein's Figure 3a.

Each (input, sigma) pair is one sampling run (`CenterSmoother.certify_radii`): the center, its check and the m
radius samples are drawn once, and certificates are read at eps_in = h * sigma for every h asked for (each
the certificate `certify` gives at that radius; together they hold with probability >= 1 - alpha1 - alpha2 -
miss, the DKW bound being uniform over levels). Records are appended to a JSONL file as they are made, so a
run can be stopped and resumed (--resume skips the pairs already there), and `summary` prints the tables of
benchmarks/RESULTS.md from it.

The paper's "h" for faces: its script adds noise sigma*255 to 0..255 pixels but reads the certificate at
Phi(Phi^-1(1/2 + Delta) + eps_in / (sigma*255)), so its Figure 3a certifies eps_in / 255 in [0, 1] pixel
units (h / 255 in ours). `--paper-h` adds that reading (h = 2/255 by default) next to the true h = 1 and 2.

    python benchmarks/center_pretrained.py faces --faces 10 --sigmas 0.05,0.15,0.25 --out benchmarks/center_faces.jsonl
    python benchmarks/center_pretrained.py text --lines 10 --sigmas 0.05 --h 1,2 --n 600 --m 1200 --delta 0.1 --batch-size 64 \
        --attack --attack-n 600 --attack-tries 8 --out benchmarks/center_text.jsonl
    python benchmarks/center_pretrained.py cost faces --inputs 3     # CPU share of the model's own calls
    python benchmarks/center_pretrained.py summary benchmarks/center_faces.jsonl benchmarks/center_text.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _done(path: Path) -> set[tuple[int, float]]:
    if not path.exists():
        return set()
    return {(r["idx"], r["sigma"]) for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "certificate"}


def _bare_calls(model, x: torch.Tensor, sigma: float, batch: int, copies: int, seed: int) -> None:
    """The base model alone on `copies` noisy copies of x, in batches of `batch` (the certifier's batching)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for begin in range(0, copies, batch):
            count = min(batch, copies - begin)
            model(x[None] + sigma * torch.randn((count, *x.shape), generator=gen))


def _raw_ms_per_copy(model, x: torch.Tensor, sigma: float, batch: int, copies: int) -> float:
    """Milliseconds per noisy copy of the base model alone, batched as the certifier batches (the cost reference)."""
    _bare_calls(model, x, sigma, batch, min(batch, copies), seed=0)  # warm-up
    start = time.perf_counter()
    _bare_calls(model, x, sigma, batch, copies, seed=1)
    return 1000.0 * (time.perf_counter() - start) / copies


def _attack(smoother, model, metric, x, cert, eps_in, n_smooth, tries, seed, delta):
    """Random search within eps_in: the direction (of `tries` random ones, scaled to norm eps_in) that moves the
    base model's clean output furthest, then the smoothed output there (SMOOTH with n_smooth samples) and its
    distance to the certified center."""
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        clean = model(x[None])
        best, best_d = None, -1.0
        for _ in range(tries):
            v = torch.randn(x.shape, generator=gen)
            moved = x + eps_in * v / v.norm()
            d = float(metric.distances(model(moved[None]), clean)[0, 0])
            if d > best_d:
                best, best_d = moved, d
    smoothed = smoother.smooth(best, n=n_smooth, delta=delta, seed=seed + 1)
    center = cert.center[None] if isinstance(cert.center, torch.Tensor) else [cert.center]
    other = smoothed.center[None] if isinstance(smoothed.center, torch.Tensor) else [smoothed.center]
    return {"base_moved": best_d, "smoothed_moved": float(metric.distances(other, center)[0, 0]),
            "attack_abstained": smoothed.abstained}


def run(args: argparse.Namespace) -> None:
    from smoothgen.center import CenterSmoother
    from smoothgen.metrics import get_metric

    torch.set_num_threads(args.threads)
    if args.command == "faces":
        from smoothgen.detection import MTCNNDetector, TopBox
        from smoothgen.vision_data import load_faces

        x_all = torch.from_numpy(load_faces(size=args.size, count=args.faces))
        model, metric_name, decode = TopBox(MTCNNDetector()), "jaccard", None
    else:
        from smoothgen.ocr import load_rapidocr
        from smoothgen.vision_data import load_text_lines

        images, _ = load_text_lines()
        x_all = torch.from_numpy(images[: args.lines])
        model, metric_name = load_rapidocr(), "levenshtein"
        decode = model.decode
    metric = get_metric(metric_name)
    if hasattr(model, "run"):  # the recogniser is a Runtime (an ONNX Runtime session), the detector a module
        model = model.run
    out = Path(args.out)
    done = _done(out) if args.resume else set()
    if not args.resume and out.exists():
        out.unlink()
    raw = {}
    hs = sorted(set(args.h + ([args.paper_h] if args.paper_h else [])))
    with out.open("a") as sink:
        for sigma in args.sigmas:
            for i in range(len(x_all)):
                if (i, sigma) in done:
                    continue
                x = x_all[i]
                if sigma not in raw:
                    raw[sigma] = _raw_ms_per_copy(model, x, sigma, args.batch_size, args.raw_copies)
                smoother = CenterSmoother(model, sigma, metric, batch_size=args.batch_size, n_candidates=args.n_candidates)
                start = time.perf_counter()
                certs = smoother.certify_radii(x, [h * sigma for h in hs], n=args.n, m=args.m, delta=args.delta,
                                               seed=args.seed, request_id=i)
                seconds = time.perf_counter() - start
                with torch.inference_mode():
                    clean = model(x[None])
                copies = 2 * args.n + (args.m if any(not c.abstained for c in certs) else 0)  # the radius samples, when drawn
                for h, cert in zip(hs, certs):
                    record = {"kind": "certificate", "data": args.command, "idx": i, "sigma": sigma, "h": h,
                              "eps_in": cert.eps_in, "eps_out": cert.eps_out, "abstained": cert.abstained,
                              "reason": cert.reason, "r_hat": cert.r_hat, "q": cert.q, "center_radius": cert.center_radius,
                              "smoothing_error": cert.smoothing_error, "n": args.n, "m": args.m, "delta": args.delta,
                              "seconds": seconds, "raw_ms_per_copy": raw[sigma], "copies": copies,
                              "cost_ratio": raw[sigma] * copies / 1000.0 / seconds}
                    if decode is not None:
                        record.update(clean_text=decode(clean[0]), smoothed_text=decode(cert.center),
                                      clean_length=len(decode(clean[0])))
                    else:
                        record.update(clean_box=clean[0].tolist(), smoothed_box=cert.center.tolist())
                    if args.attack and h == args.attack_h and not cert.abstained and i < args.attack_inputs:
                        record.update(_attack(smoother, model, metric, x, cert, cert.eps_in, args.attack_n, args.attack_tries,
                                              seed=1000 + i, delta=args.delta))
                        record["attack_within"] = record["smoothed_moved"] <= cert.eps_out
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                print(f"{args.command} {i} sigma {sigma}: " + ", ".join(
                    f"h={h:.3g} eps_out={c.eps_out:.3f}" for h, c in zip(hs, certs)) + f"  ({seconds:.0f} s)", flush=True)


def cost(args: argparse.Namespace) -> None:
    """CPU seconds (this process, all threads: robust to other load on the machine) of one certificate against
    the same number of bare model calls on noisy copies batched the same way: the share of the work that is
    the model's own (target >= 0.9)."""
    from smoothgen.center import CenterSmoother

    torch.set_num_threads(args.threads)
    if args.data == "faces":
        from smoothgen.detection import MTCNNDetector, TopBox
        from smoothgen.vision_data import load_faces

        x_all, model, metric = torch.from_numpy(load_faces(count=args.inputs)), TopBox(MTCNNDetector()), "jaccard"
    else:
        from smoothgen.ocr import load_rapidocr
        from smoothgen.vision_data import load_text_lines

        x_all, model, metric = torch.from_numpy(load_text_lines()[0][: args.inputs]), load_rapidocr(), "levenshtein"
    call = model.run if hasattr(model, "run") else model
    for i, x in enumerate(x_all):
        smoother = CenterSmoother(call, args.sigma, metric, batch_size=args.batch_size, n_candidates=30)
        smoother.certify(x, args.sigma, n=50, m=50, seed=1)  # warm-up
        start = time.process_time()
        cert = smoother.certify(x, args.sigma, n=args.n, m=args.m, delta=args.delta, seed=0, request_id=i)
        certify_cpu = time.process_time() - start
        copies = 2 * args.n + (0 if cert.abstained and cert.reason == "center check failed" else args.m) + 1
        start = time.process_time()
        _bare_calls(call, x, args.sigma, args.batch_size, copies, seed=2)
        raw_cpu = time.process_time() - start
        print(json.dumps({"kind": "cost", "data": args.data, "abstained": cert.abstained, "idx": i, "sigma": args.sigma, "n": args.n, "m": args.m,
                          "copies": copies, "certify_cpu_s": certify_cpu, "raw_cpu_s": raw_cpu,
                          "model_share": raw_cpu / certify_cpu, "cpu_ms_per_copy": 1000 * certify_cpu / copies}), flush=True)


def encoder(args: argparse.Namespace) -> None:
    """The README's SmoothedEncoder example on the real all-MiniLM-L6-v2: which settings certify non-vacuously."""
    from smoothgen.encoders import SmoothedEncoder
    from smoothgen.generative import TokenAblation
    from smoothgen.models.text_digits import load_text_encoder

    torch.set_num_threads(args.threads)
    st = load_text_encoder()
    sentences = ["a handwritten seven", "the digit seven", "a photo of a cat", "an old scanned page of a book"]
    ref = torch.nn.functional.normalize(torch.tensor(st.encode(sentences)), dim=-1)
    apart = (1 - ref @ ref.T)[~torch.eye(len(sentences), dtype=torch.bool)]
    print(f"cosine distance between different sentences: closest {float(apart.min()):.3f}, median {float(apart.median()):.3f}")
    for sigma, eps in ((0.01, 0.01), (0.005, 0.005), (0.05, 0.01)):
        start = time.perf_counter()
        c = SmoothedEncoder(st, sigma).center_certify(sentences[0], eps_in=eps, n=args.n, m=args.m, seed=0)
        print(f"Gaussian sigma {sigma}: eps_in {eps} eps_out {c.eps_out:.4f} smoothing error {c.smoothing_error:.4f} "
              f"abstained {c.abstained} ({time.perf_counter() - start:.0f} s)", flush=True)
    ab = SmoothedEncoder(st, TokenAblation(keep=2, mask_token_id=st.tokenizer.mask_token_id))
    c = ab.center_certify(sentences[0], edits=1, n=args.n, m=args.m, seed=0)
    print(f"ablation keep 2: 1 edit eps_out {c.eps_out:.4f} smoothing error {c.smoothing_error:.4f} abstained {c.abstained}")


def summary(paths: list[str]) -> None:
    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines()]
    for data in ("faces", "text"):
        rows = [r for r in records if r.get("data") == data]
        if not rows:
            continue
        print(f"\n{data}: {len({r['idx'] for r in rows})} inputs, n = {rows[0]['n']}, m = {rows[0]['m']}")
        print("| h | eps_in | sigma | certified | median eps_out | " + ("median IoU kept | " if data == "faces" else "median chars | median share of line | ")
              + "median smoothing error | s per input (wall, shared machine) |")
        print("|---|---|---|---|---|---|---|---|" + ("" if data == "faces" else "---|"))
        for h, sigma in sorted({(r["h"], r["sigma"]) for r in rows}):
            group = [r for r in rows if r["h"] == h and r["sigma"] == sigma]
            ok = [r for r in group if not r["abstained"]]
            med = statistics.median(r["eps_out"] for r in ok) if ok else math.inf
            err = statistics.median(r["smoothing_error"] for r in group)
            secs = statistics.median(r["seconds"] for r in group)
            if data == "faces":
                scale = f"{max(0.0, 1 - med):.2f}" if ok else "-"
            else:
                share = statistics.median(math.floor(r["eps_out"] + 1e-9) / max(r["clean_length"], 1) for r in ok) if ok else math.inf
                scale = f"{math.floor(med + 1e-9) if ok else '-'} | {share:.0%}" if ok else "- | -"
            h_text = f"{h:.4g}" + (" (paper's 2)" if abs(h - 2 / 255) < 1e-9 else "")
            print(f"| {h_text} | {h * sigma:.4g} | {sigma:g} | {len(ok)}/{len(group)} | {med:.3f} | {scale} | {err:.3f} | "
                  f"{secs:.0f} |")
        attacked = [r for r in rows if "attack_within" in r]
        if attacked:
            worst = max(attacked, key=lambda r: (r["smoothed_moved"], -r["eps_out"]))
            print(f"attack (random search, base-model direction, smoothed at the attacked input): {len(attacked)} certificates, "
                  f"{sum(r['attack_within'] for r in attacked)} within eps_out; largest smoothed move "
                  f"{worst['smoothed_moved']:.3f} (input {worst['idx']}, whose eps_out is {worst['eps_out']:.3f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("faces", "text"):
        p = sub.add_parser(name, help=f"certify the {'MTCNN boxes of LFW faces' if name == 'faces' else 'PP-OCRv4 readings of text lines'}")
        if name == "faces":
            p.add_argument("--faces", type=int, default=10, help="how many LFW faces (the paper: 50)")
            p.add_argument("--size", type=int, default=100, help="face image side in pixels")
        else:
            p.add_argument("--lines", type=int, default=10, help="how many text lines (page.png's, then rendered ones)")
        p.add_argument("--sigmas", type=_floats, default=[0.05, 0.15, 0.25], help="noise levels (one sampling run each)")
        p.add_argument("--h", type=_floats, default=[1.0, 2.0], help="eps_in / sigma read from each run")
        p.add_argument("--paper-h", type=float, default=2 / 255 if name == "faces" else 0.0,
                       help="also read the paper's effective h (its eps_in / (sigma*255)); 0 = none")
        p.add_argument("--n", type=int, default=5000)
        p.add_argument("--m", type=int, default=10_000)
        p.add_argument("--n-candidates", type=int, default=30)
        p.add_argument("--delta", type=float, default=0.05, help="Delta (n must make sqrt(ln(2/alpha1)/2n) <= Delta)")
        p.add_argument("--batch-size", type=int, default=500)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--raw-copies", type=int, default=1000, help="copies timed through the bare model per sigma")
        p.add_argument("--attack", action="store_true", help="random-search attack on the certificates at --attack-h")
        p.add_argument("--attack-h", type=float, default=1.0)
        p.add_argument("--attack-inputs", type=int, default=10)
        p.add_argument("--attack-n", type=int, default=2000, help="samples of SMOOTH at the attacked input")
        p.add_argument("--attack-tries", type=int, default=16)
        p.add_argument("--out", required=True)
        p.add_argument("--resume", action="store_true")
    c = sub.add_parser("cost", help="CPU time of a certificate against the bare model calls it makes")
    c.add_argument("data", choices=["faces", "text"])
    c.add_argument("--inputs", type=int, default=3)
    c.add_argument("--sigma", type=float, default=0.05)
    c.add_argument("--n", type=int, default=2000)
    c.add_argument("--m", type=int, default=2000)
    c.add_argument("--delta", type=float, default=0.05)
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("encoder", help="the README's SmoothedEncoder settings on the real all-MiniLM-L6-v2")
    e.add_argument("--n", type=int, default=2000)
    e.add_argument("--m", type=int, default=4000)
    e.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("summary", help="print the tables from result files")
    s.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "summary":
        summary(args.paths)
    elif args.command == "cost":
        cost(args)
    elif args.command == "encoder":
        encoder(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
