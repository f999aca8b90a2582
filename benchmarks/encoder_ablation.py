"""SmoothedEncoder under token ablation on held-out real sentences: the shipped all-MiniLM-L6-v2 against the
same model with the ablation adapter (`smoothgen.models.ablation_encoder`), issue 23 item 1.

For every held-out sentence (scikit-learn's dataset descriptions, never trained on) and setting (model,
keep fraction f, edits r): the perturbed positions are the words between [CLS] and [SEP] (P of them), each
copy keeps k = max(1, round(f·P)) of them, and `SmoothedEncoder.center_certify(edits=r)` certifies the
smoothed embedding (metric "cosine", γ = 2, ε_out = 10·R̂; or "angular", γ = 1, ε_out = 3·R̂, converted to
cosine distance). Each record holds the certificate and how the smoothed
embedding ẑ sits among the sentences: its cosine distance to the sentence's clean embedding by the
original model (what users compare against), whether that clean embedding is ẑ's nearest among the
clean embeddings of all held-out sentences (retrieval), the distance from the sentence to its nearest
other sentence and to a hand-written paraphrase where the benchmark has one.

    python benchmarks/encoder_ablation.py certify --out benchmarks/encoder_ablation_center.jsonl
    python benchmarks/encoder_ablation.py mean --out benchmarks/encoder_ablation.jsonl
    python benchmarks/encoder_ablation.py summary benchmarks/encoder_ablation.jsonl benchmarks/encoder_ablation_center.jsonl

`mean` runs the mean-smoothing certificate instead (`SmoothedEncoder.mean_certify`, docs/theory.md §4i): the
exact mean of the unit-norm embeddings over every kept k-subset, k = 1, 2, and its certified cosine bound
at 1 and 2 edited tokens, compared with the distances between the smoothed embeddings of different sentences.
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

#: Hand-written paraphrases of some held-out sentences (index -> paraphrase), for the stretch target:
#: is ε_out below the distance from a sentence to a rewording that means the same?
PARAPHRASES = {
    3: "They characterise the nuclei of the cells shown in the picture.",
    10: "A household is a set of people who live together in one home.",
    14: "There are seven cover types, so this is a classification problem with many classes.",
    16: "If needed, the dataset is downloaded from the internet.",
    17: "The dataset holds pictures of handwritten digits, ten classes, one class per digit.",
    28: "This is probably the most famous database in the pattern recognition literature.",
    36: "Every picture is centred on one face.",
    42: "The dataset is larger than 200 MB.",
    45: "Linnerud is a regression dataset with several outputs.",
    46: "Each of the 40 different subjects has ten different pictures.",
    55: "Every sample has at least one topic and at most 17 topics.",
    67: "A few other classifiers handle this more difficult version of the task better.",
    80: "Many others also used the data to compare different classifiers.",
}

#: (model, keep fraction, edits, output metric) settings certified by default. "angular" (arccos/π, a metric:
#: γ = 1, ε_out = 3·R̂) certifies the same embeddings as "cosine" (γ = 2, ε_out = 10·R̂) and converts to it
#: exactly: d_ang ≤ ε implies d_cos ≤ 1 − cos(π·ε).
SETTINGS = (("ablation", 0.2, 1, "angular"), ("ablation", 0.2, 1, "cosine"), ("ablation", 0.3, 1, "angular"),
            ("ablation", 0.1, 2, "angular"), ("ablation", 0.15, 2, "angular"), ("original", 0.2, 1, "angular"))
#: (model, deletion probability p, edits, metric) under token deletion (docs/theory.md §4j): the certificate
#: then covers any r inserted, deleted or substituted word pieces; chosen as `--setting delete:MODEL:P:R:METRIC`.
DELETION_SETTINGS = (("original", 0.9, 1, "angular"), ("ablation", 0.9, 1, "angular"), ("original", 0.8, 1, "angular"))


def _settings(chosen: list[str] | None) -> list[tuple[str, str, float, int, str]]:
    """(noise, model, keep fraction or deletion probability, edits, metric) of the settings to run."""
    every = [("ablate", *s) for s in SETTINGS] + [("delete", *s) for s in DELETION_SETTINGS]
    ids = {s: ":".join(map(str, s[1:])) if s[0] == "ablate" else ":".join(map(str, s)) for s in every}
    return [s for s in every if (chosen is None and s[0] == "ablate") or (chosen is not None and ids[s] in chosen)]


def as_cosine(eps_out: float, metric: str) -> float:
    """ε_out in cosine distance: itself for "cosine"; 1 − cos(π·ε) for "angular" (2 when ε ≥ 1)."""
    if metric == "cosine":
        return eps_out
    return 2.0 if eps_out >= 1 else 1 - math.cos(math.pi * eps_out)


def certify(args: argparse.Namespace) -> None:
    from smoothgen.deletion import TokenDeletion
    from smoothgen.encoders import SmoothedEncoder
    from smoothgen.generative import TokenAblation
    from smoothgen.models.ablation_encoder import heldout_sentences, inner_positions, keep_count, load_ablation_encoder
    from smoothgen.models.text_digits import load_text_encoder

    torch.set_num_threads(args.threads)
    models = {"original": load_text_encoder(), "ablation": load_ablation_encoder()}
    tokenizer = models["original"].tokenizer
    sentences = heldout_sentences()[: args.limit]
    clean = torch.nn.functional.normalize(torch.tensor(models["original"].encode(sentences)), dim=-1)
    apart = 1 - clean @ clean.T
    apart.fill_diagonal_(math.inf)
    para = {i: p for i, p in PARAPHRASES.items() if i < len(sentences)}
    para_emb = torch.nn.functional.normalize(torch.tensor(models["original"].encode(list(para.values()))), dim=-1)
    para_dist = {i: float(1 - clean[i] @ e) for i, e in zip(para, para_emb)}
    out = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout
    for noise, name, fraction, edits, metric in _settings(args.setting):
        st = models[name]
        for i, sentence in enumerate(sentences):
            ids = torch.tensor(tokenizer(sentence)["input_ids"])
            perturbed = ids.numel() - 2
            keep = keep_count(fraction, perturbed) if noise == "ablate" else None
            space = TokenAblation(keep, tokenizer.mask_token_id) if noise == "ablate" else TokenDeletion(fraction)
            encoder = SmoothedEncoder(st, space, mask=inner_positions, batch_size=args.batch_size, metric=metric)
            start = time.perf_counter()
            cert = encoder.center_certify(ids, edits=edits, n=args.n, m=args.m, seed=args.seed)
            seconds = time.perf_counter() - start
            z = torch.nn.functional.normalize(cert.center.detach().float().cpu(), dim=-1)
            sims = clean @ z
            record = {
                "model": name, "noise": noise, "keep_fraction": fraction if noise == "ablate" else None,
                "delete_prob": fraction if noise == "delete" else None, "edits": edits, "metric": metric, "idx": i, "sentence": sentence,
                "perturbed": perturbed, "keep": keep, "n": args.n, "m": args.m, "abstained": cert.abstained,
                "reason": cert.reason, "eps_out": cert.eps_out,
                "eps_out_cosine": None if cert.abstained else as_cosine(cert.eps_out, metric), "r_hat": cert.r_hat, "p": cert.p, "q": cert.q,
                "smoothing_error": cert.smoothing_error,
                "distance_to_clean": float(1 - sims[i]),
                "retrieved": int(sims.argmax()) == i,
                "nearest_other": float(apart[i].min()),
                "median_other": float(apart[i][torch.isfinite(apart[i])].median()),
                "paraphrase_distance": para_dist.get(i), "seconds": seconds,
            }
            print(json.dumps(record), file=out, flush=True)
            print(f"{name} {noise} {fraction} r={edits} {metric} #{i}: eps_out {cert.eps_out:.3f} abstained {cert.abstained} "
                  f"to clean {record['distance_to_clean']:.3f} ({seconds:.1f} s)", file=sys.stderr, flush=True)


#: Keep counts k of the mean-smoothing runs (every kept subset is enumerated: exact means).
MEAN_KEEPS = (1, 2)


def mean(args: argparse.Namespace) -> None:
    """Mean smoothing under ablation (`SmoothedEncoder.mean_certify`, exact): per sentence, model and k, the
    certified cosine bound at 1 and 2 edits and where the smoothed mean sits among the sentences."""
    from smoothgen.encoders import SmoothedEncoder, cosine_bound
    from smoothgen.generative import TokenAblation, ablation_delta
    from smoothgen.models.ablation_encoder import heldout_sentences, inner_positions, load_ablation_encoder
    from smoothgen.models.text_digits import load_text_encoder

    torch.set_num_threads(args.threads)
    models = {"ablation": load_ablation_encoder(), "original": load_text_encoder()}
    tokenizer = models["original"].tokenizer
    sentences = heldout_sentences()[: args.limit]
    clean = torch.nn.functional.normalize(torch.tensor(models["original"].encode(sentences)), dim=-1).double()
    out = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout
    for name in args.model:
        for keep in args.keep:
            encoder = SmoothedEncoder(models[name], TokenAblation(keep, tokenizer.mask_token_id), mask=inner_positions,
                                      batch_size=args.batch_size)
            certs, seconds = [], []
            for sentence in sentences:
                start = time.perf_counter()
                certs.append(encoder.mean_certify(sentence, edits=1))
                seconds.append(time.perf_counter() - start)
            means = torch.nn.functional.normalize(torch.stack([c.mean for c in certs]), dim=-1)
            between = 1 - means @ means.T
            between.fill_diagonal_(math.inf)
            sims = means @ clean.T
            para = {i: p for i, p in PARAPHRASES.items() if i < len(sentences)}
            para_means = {i: encoder.mean_certify(p, edits=0).mean for i, p in para.items()}
            for i, cert in enumerate(certs):
                bound2 = cosine_bound(2 * float(ablation_delta(cert.perturbed, cert.keep, 2)), cert.norm_lower)
                to_para = (float(1 - torch.nn.functional.cosine_similarity(cert.mean, para_means[i], dim=0))
                           if i in para_means else None)
                record = {
                    "kind": "mean", "model": name, "keep": keep, "idx": i, "perturbed": cert.perturbed,
                    "copies": cert.copies, "exact": cert.exact, "norm": cert.norm,
                    "cosine_bound_1": cert.cosine_bound, "cosine_bound_2": bound2,
                    "distance_to_clean": float(1 - sims[i, i]), "retrieved": int(sims[i].argmax()) == i,
                    "nearest_other": float(between[i].min()),
                    "median_other": float(between[i][torch.isfinite(between[i])].median()),
                    "paraphrase_distance": to_para, "seconds": seconds[i],
                }
                print(json.dumps(record), file=out, flush=True)
            print(f"{name} k={keep}: {len(certs)} sentences, {sum(seconds):.0f} s", file=sys.stderr, flush=True)


def mean_summary(records: list[dict]) -> None:
    print(f"\nmean smoothing (exact): {len({r['idx'] for r in records})} held-out sentences")
    print("| model | keep k | median P | certified d_cos bound, 1 edit | 2 edits | median d between smoothed "
          "sentences | nearest other | bound (1 edit) < nearest other | bound (2 edits) < nearest other | "
          "bound (1 edit) < paraphrase | median d(smoothed, clean) | retrieval |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted({(r["model"], r["keep"]) for r in records}, key=lambda k: (k[0] != "ablation", k[1])):
        g = [r for r in records if (r["model"], r["keep"]) == key]
        med = lambda f: statistics.median(f(r) for r in g)  # noqa: E731
        with_para = [r for r in g if r["paraphrase_distance"] is not None]
        print(f"| {key[0]} | {key[1]} | {med(lambda r: r['perturbed']):.0f} | {med(lambda r: r['cosine_bound_1']):.4f} | "
              f"{med(lambda r: r['cosine_bound_2']):.4f} | {med(lambda r: r['median_other']):.4f} | "
              f"{med(lambda r: r['nearest_other']):.4f} | "
              f"{sum(r['cosine_bound_1'] < r['nearest_other'] for r in g)}/{len(g)} | "
              f"{sum(r['cosine_bound_2'] < r['nearest_other'] for r in g)}/{len(g)} | "
              f"{sum(r['cosine_bound_1'] < r['paraphrase_distance'] for r in with_para)}/{len(with_para)} | "
              f"{med(lambda r: r['distance_to_clean']):.3f} | {sum(r['retrieved'] for r in g) / len(g):.0%} |")


def summary(paths: list[str]) -> None:
    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    means = [r for r in records if r.get("kind") == "mean"]
    records = [r for r in records if r.get("kind") != "mean"]
    if means:
        mean_summary(means)
    if not records:
        return
    first = records[0]
    apart = statistics.median(r["median_other"] for r in records if r["model"] == first["model"])
    print(f"{len({r['idx'] for r in records})} held-out sentences, n = {first['n']}, m = {first['m']}; median cosine "
          f"distance between different sentences {apart:.3f}")
    print("| model | noise | edits r | metric | certified | median ε_out (cosine) | median d(ẑ, clean) | retrieval | "
          "ε_out < nearest other | ε_out < paraphrase | median s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    def key_of(r: dict) -> tuple:
        noise = r.get("noise", "ablate")
        return r["model"], noise, r["keep_fraction"] if noise == "ablate" else r["delete_prob"], r["edits"], r["metric"]

    keys = {key_of(r) for r in records}
    for key in sorted(keys, key=lambda k: (k[1], k[0] != "ablation", k[3], k[2], k[4])):
        group = [r for r in records if key_of(r) == key]
        ok = [r for r in group if not r["abstained"]]
        # Abstentions count as vacuous (ε_out = 2, the cosine diameter) in the median over all sentences.
        med = statistics.median(2.0 if r["abstained"] else r["eps_out_cosine"] for r in group)
        to_clean = statistics.median(r["distance_to_clean"] for r in group)
        retrieved = sum(r["retrieved"] for r in group) / len(group)
        below = sum(r["eps_out_cosine"] < r["nearest_other"] for r in ok)
        with_para = [r for r in group if r["paraphrase_distance"] is not None]
        below_para = sum((not r["abstained"]) and r["eps_out_cosine"] < r["paraphrase_distance"] for r in with_para)
        noise = f"keep f = {key[2]:g}" if key[1] == "ablate" else f"deletion p = {key[2]:g}"
        print(f"| {key[0]} | {noise} | {key[3]} | {key[4]} | {len(ok)}/{len(group)} ({len(ok) / len(group):.0%}) | {med:.3f} | "
              f"{to_clean:.3f} | {retrieved:.0%} | {below}/{len(group)} | {below_para}/{len(with_para)} | "
              f"{statistics.median(r['seconds'] for r in group):.1f} |")
    paras = sorted({r["idx"]: r["paraphrase_distance"] for r in records if r["paraphrase_distance"] is not None}.values())
    if paras:
        print(f"median cosine distance to a hand-written paraphrase: {statistics.median(paras):.3f} ({len(paras)} sentences)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("certify", help="certify every held-out sentence in every setting; one JSON line each")
    c.add_argument("--n", type=int, default=2000, help="copies for the center and for its check (each)")
    c.add_argument("--m", type=int, default=4000, help="copies for the radius")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--limit", type=int, default=None, help="only the first N held-out sentences")
    c.add_argument("--setting", action="append", default=None, metavar="[delete:]MODEL:F:R:METRIC",
                   help="only these settings, e.g. ablation:0.2:1:angular (keep a fifth of the word pieces) or "
                        "delete:original:0.9:1:angular (delete each with probability 0.9) (default: all of SETTINGS)")
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--out", default=None, help="append the records to this file (default: stdout)")
    mp = sub.add_parser("mean", help="mean smoothing (exact enumeration) of every held-out sentence; one JSON line each")
    mp.add_argument("--model", action="append", choices=["ablation", "original"], default=None)
    mp.add_argument("--limit", type=int, default=None, help="only the first N held-out sentences")
    mp.add_argument("--keep", type=int, action="append", default=None, help=f"keep counts k (default: {MEAN_KEEPS})")
    mp.add_argument("--batch-size", type=int, default=500)
    mp.add_argument("--threads", type=int, default=2)
    mp.add_argument("--out", default=None, help="append the records to this file (default: stdout)")
    s = sub.add_parser("summary", help="the RESULTS.md tables of certify's and mean's records")
    s.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "certify":
        certify(args)
    elif args.command == "mean":
        args.model = args.model or ["ablation", "original"]
        args.keep = args.keep or list(MEAN_KEEPS)
        mean(args)
    else:
        summary(args.paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
