"""Content certificates in edited prompt tokens for the embedded text-to-digit model (docs/theory.md §4f, §4g, §4h).

For held-out prompts (`text_digits.HELDOUT_TEMPLATES`, never seen in training), optionally rendered with
redundancy (the digit stated in several templates joined by ", ") and/or with the digit word protected,
certify the digit the generated images show against edited tokens (`PromptContentSmoother.certify`) and
write one JSON record per prompt:

* the certificate, whether its class is the digit asked for;
* quality: the UNSMOOTHED accuracy (G(E(prompt)) generated `--quality-samples` times with the stock
  all-MiniLM-L6-v2 and with the chosen encoder, each image read by the clean digit classifier) and the
  SMOOTHED accuracy (the share of the certificate's own ablated copies, selection and estimation, whose
  generation is classified as the asked digit: counted while CERTIFY runs, no extra generations);
* rewordings: every rewording `text_digits.token_variants` lists that the certificate COVERS (same token
  count, at most r* substitutions, all at perturbed positions), two-substitution rewordings written here
  (a typo or word substitution on top of a covered one) when r* ≥ 2, and a seeded sample of the NOT covered
  ones at token edit distance ≤ 2. Rewordings with the prompt's own tokens (case changes under the uncased
  tokenizer) and the TRAINING templates are left out: the set is held out. For each, whether the reworded
  prompt actually keeps the digit: the majority digit of `--variant-samples` unsmoothed generations (stock
  encoder and chosen encoder) and of `--variant-copies` ablated copies of the smoothed model (for a rewording
  of the prompt's token count the perturbed positions are the clean prompt's, as the certificate's g_M; for
  another count they are resolved afresh on the rewording, as a user would run it).

    python benchmarks/prompt_content.py --digits 3,7 --templates 2 --n 200 --steps 5 --out results/prompt_content.jsonl
    python benchmarks/prompt_content.py --encoder ablation --redundancy 2 --protect-digit --templates 2 \\
        --steps 10 --n0 20 --n 200 --out benchmarks/prompt_content.jsonl --append
    python benchmarks/prompt_content.py --summary benchmarks/prompt_content.jsonl

The encoder is a parameter: `--encoder stock` (default: the packaged all-MiniLM-L6-v2), `--encoder ablation`
(`smoothgen.models.load_ablation_encoder()`: the same model with the adapter distilled under token
ablation) or `--encoder FOLDER` (a sentence-transformers folder). Its mask token is the tokenizer's [MASK].
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

#: Rewordings left out of the held-out set: the training templates (seen in training).
EXCLUDED_KINDS = ("train_template",)
#: Rewordings that put ANOTHER digit's word into the prompt (`injected_digit_variants`).
INJECTED_KINDS = ("inject_1", "inject_2", "replace_digit")


def prompts(digits: list[int], templates: int, redundancy: int) -> list[tuple[str, int]]:
    from smoothgen.models import text_digits

    chosen = text_digits.HELDOUT_TEMPLATES[:templates]
    out = []
    for digit in digits:
        for i, template in enumerate(chosen):
            parts = [text_digits.render(t, digit) for t in (chosen[i:] + chosen[:i])[:redundancy]]
            out.append((", ".join(parts), digit))
    return out


def load_encoder(name: str | None):
    """'stock' (or None): the packaged all-MiniLM-L6-v2; 'ablation': `load_ablation_encoder()`; else a folder."""
    from smoothgen.models import load_ablation_encoder, text_digits

    if name in (None, "stock"):
        return text_digits.load_text_encoder()
    if name == "ablation":
        return load_ablation_encoder()
    return _load_encoder(name)


def _load_encoder(folder: str):
    import sentence_transformers

    return sentence_transformers.SentenceTransformer(folder, device="cpu", local_files_only=True)


class _Tally:
    """Wraps a smoother's `classify` to keep every class it returns (CERTIFY's selection copies come first,
    then its estimation copies), so the smoothed accuracy is read off the certificate's own copies."""

    def __init__(self, smoother):
        self.smoother, self.original, self.classes = smoother, smoother.classify, []

    def __enter__(self):
        def classify(ids):
            out = self.original(ids)
            self.classes.append(out.clone())
            return out

        self.smoother.classify = classify
        return self

    def __exit__(self, *exc):
        del self.smoother.classify  # back to the class's method
        return False

    def counts(self, num_classes: int = 10) -> np.ndarray:
        if not self.classes:
            return np.zeros(num_classes, dtype=np.int64)
        return np.bincount(torch.cat(self.classes).numpy(), minlength=num_classes)


@torch.no_grad()
def unsmoothed_classes(smoother, text: str, samples: int, seed: int, request_id: int) -> list[int]:
    """Digits of `samples` generations G(E(text)) (the whole prompt, no ablation), read by the classifier."""
    ids = torch.tensor(smoother.token_ids(text), dtype=torch.long, device=smoother.device)
    smoother.generator.reseed(seed, request_id)
    return smoother.classify(ids[None].expand(samples, -1).contiguous()).tolist()


@torch.no_grad()
def smoothed_counts(smoother, text: str, copies: int, seed: int, request_id: int, *, mask=None, protect=None) -> np.ndarray:
    """Class counts of `copies` ablated copies of `text` (Purpose.PREDICT subsets, the generator reseeded)."""
    from smoothgen.engine import Purpose, RandomStream

    resolved = smoother.resolve(text, protect=protect, mask=mask)
    smoother.generator.reseed(seed, request_id)
    return smoother._counts(resolved, RandomStream(seed, request_id).key(Purpose.PREDICT), 0, copies)


def _majority(classes) -> int:
    return Counter(classes).most_common(1)[0][0]


def two_substitution_variants(text: str, cert, smoother, covered: list, limit: int, rng: random.Random) -> list[tuple[str, str]]:
    """Rewordings two token substitutions away, all at perturbed positions: a typo or word substitution on top
    of a covered one-substitution rewording (written here, never in training data)."""
    from smoothgen.models import text_digits

    base = list(cert.prompt_ids)
    seen, out = {text} | {v.text for v in covered}, []
    for v in covered:
        if v.substitutions != 1:
            continue
        for t in text_digits.word_substitution_variants(v.text) + text_digits.typo_variants(v.text):
            if t in seen:
                continue
            seen.add(t)
            ids = smoother.token_ids(t)
            if len(ids) == len(base) and sum(a != b for a, b in zip(ids, base)) == 2 and cert.covers(ids)[0]:
                out.append((t, f"{v.kind}+edit"))
    rng.shuffle(out)
    return out[:limit]


def injected_digit_variants(text: str, digit: int, cert, smoother, args, rng: random.Random) -> list[tuple[str, str]]:
    """The hard rewordings, written here: ANOTHER digit's number word substituted for words of the prompt.

    * "inject_1": one word other than the digit word replaced by another number word (one token each, so one
      token substitution at a perturbed position: covered when r* >= 1);
    * "inject_2": two such words replaced by the same other number word (covered when r* >= 2);
    * "replace_digit": every occurrence of the digit word replaced by another number word (an edit of the
      digit word itself: covered only when it is not protected and r* reaches the occurrences).
    """
    from smoothgen.models import text_digits

    words = text.split(" ")
    own = text_digits.NUMBER_WORDS[digit]
    others = [w for w in text_digits.NUMBER_WORDS if w != own]
    base = list(cert.prompt_ids)
    slots = [i for i, w in enumerate(words) if w.isalpha() and w != own and len(smoother.tokenizer.tokenize(w)) == 1]

    def edited(positions, word):
        out = list(words)
        for i in positions:
            out[i] = word
        return " ".join(out)

    def same_length(t):
        return len(smoother.token_ids(t)) == len(base)

    one = [edited([i], w) for i in slots for w in others]
    two = [edited([i, j], w) for i in slots for j in slots if i < j for w in others]
    rng.shuffle(one)
    rng.shuffle(two)
    own_slots = [i for i, w in enumerate(words) if w.strip(",") == own]
    replace = [" ".join(w.replace(own, o) if i in own_slots else w for i, w in enumerate(words)) for o in others]
    rng.shuffle(replace)
    out = [(t, "inject_1") for t in one if same_length(t)][: args.injected_variants]
    out += [(t, "inject_2") for t in two if same_length(t)][: args.injected_variants // 2]
    out += [(t, "replace_digit") for t in replace][: max(1, args.injected_variants // 4)]
    return out


def measure_variants(text, digit, cert, smoother, stock_smoother, args, rng) -> list[dict]:
    from smoothgen.models import text_digits

    variants = text_digits.token_variants(text, cert, smoother.tokenizer, digit=digit, include_other_digits=False)
    held_out = [v for v in variants if v.kind not in EXCLUDED_KINDS and v.token_edit_distance > 0]
    covered = [v for v in held_out if v.covered]
    not_covered = [v for v in held_out if not v.covered and v.token_edit_distance <= 2]
    rng.shuffle(not_covered)
    chosen = [(v.text, v.kind, True) for v in covered]
    if cert.certified_edits >= 2:
        chosen += [(t, k, True) for t, k in two_substitution_variants(text, cert, smoother, covered, args.two_edit_variants, rng)]
    chosen += [(v.text, v.kind, False) for v in not_covered[: args.uncovered_variants]]
    chosen += [(t, k, cert.covers(smoother.token_ids(t))[0])
               for t, k in injected_digit_variants(text, digit, cert, smoother, args, rng)]
    base_ids = list(cert.prompt_ids)
    rows = []
    for j, (t, kind, covered_flag) in enumerate(chosen):
        ids = smoother.token_ids(t)
        ok, reason = cert.covers(ids)
        assert ok == covered_flag, (t, reason)
        same_length = len(ids) == len(base_ids)
        if same_length:  # the certificate's g_M: the clean prompt's perturbed positions, held fixed
            mask, protect = list(cert.mask), []
        else:  # another token count: the smoothed model resolved afresh on the rewording
            mask, protect = None, (args.protect_word if args.protect_word and args.protect_word in t else [])
        try:
            counts = smoothed_counts(smoother, t, args.variant_copies, args.seed, 10_000 + j, mask=mask, protect=protect)
            smoothed = int(np.argmax(counts))
            smoothed_share = float(counts[digit]) / args.variant_copies
        except Exception as exc:  # noqa: BLE001 - e.g. keep >= P on a shorter rewording: recorded
            smoothed, smoothed_share = None, None
            reason += f"; smoothed model not run: {exc}"
        unsmoothed = unsmoothed_classes(smoother, t, args.variant_samples, args.seed, 20_000 + j)
        row = {
            "text": t, "kind": kind, "injected": kind in INJECTED_KINDS, "covered": covered_flag, "reason": reason, "tokens": len(ids),
            "substitutions": sum(a != b for a, b in zip(ids, base_ids)) if same_length else None,
            "unsmoothed_digit": _majority(unsmoothed), "unsmoothed_share": unsmoothed.count(digit) / len(unsmoothed),
            "smoothed_digit": smoothed, "smoothed_share": smoothed_share,
        }
        row["keeps_unsmoothed"] = row["unsmoothed_digit"] == digit
        row["keeps_smoothed"] = smoothed == digit
        if stock_smoother is not smoother:
            stock = unsmoothed_classes(stock_smoother, t, args.variant_samples, args.seed, 20_000 + j)
            row["stock_unsmoothed_digit"] = _majority(stock)
            row["keeps_stock_unsmoothed"] = row["stock_unsmoothed_digit"] == digit
        rows.append(row)
    return rows


def run(args: argparse.Namespace, encoder=None) -> list[dict]:
    from smoothgen.errors import SmoothgenError
    from smoothgen.models import load_classifier, load_text_ddpm, text_digits

    encoder_name = getattr(args, "encoder", None) or "stock"
    if encoder is None:
        encoder = load_encoder(encoder_name)
    stock_encoder = encoder if encoder_name == "stock" else text_digits.load_text_encoder()
    unet, classifier = load_text_ddpm(), load_classifier(0.0)
    quality = getattr(args, "quality_samples", 0)
    variants_on = getattr(args, "variants", True)
    records = []
    for index, (text, digit) in enumerate(prompts(args.digits, args.templates, args.redundancy)):
        protect = text_digits.NUMBER_WORDS[digit] if args.protect_digit and text_digits.NUMBER_WORDS[digit] in text else None
        args.protect_word = protect
        smoother = text_digits.prompt_token_text_digits(unet, classifier, keep=args.keep, encoder=encoder, protect=protect,
                                                        num_steps=args.steps, batch_size=args.batch_size)
        stock_smoother = smoother if stock_encoder is encoder else text_digits.prompt_token_text_digits(
            unet, classifier, keep=args.keep, encoder=stock_encoder, protect=protect, num_steps=args.steps,
            batch_size=args.batch_size)
        start = time.perf_counter()
        try:
            with _Tally(smoother) as tally:
                cert = smoother.certify(text, edits=1, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
        except SmoothgenError as exc:  # e.g. a prompt too short for this keep: recorded, not fatal
            records.append({"text": text, "digit": digit, "protect": protect, "encoder": encoder_name, "keep": args.keep,
                            "redundancy": args.redundancy, "protect_digit": bool(args.protect_digit), "error": str(exc)})
            continue
        seconds = time.perf_counter() - start
        counts = tally.counts()
        # Consistency: the estimation copies' count of the selected class is the certificate's n_A.
        estimation = np.bincount(torch.cat(tally.classes).numpy()[cert.n0:], minlength=10)
        assert int(estimation[cert.selected]) == cert.count, (estimation, cert.count)
        variants = text_digits.token_variants(text, cert, smoother.tokenizer, digit=digit, include_other_digits=False)
        record = {
            "text": text, "digit": digit, "protect": protect, "encoder": encoder_name, "redundancy": args.redundancy,
            "protect_digit": bool(args.protect_digit), "keep": args.keep, "steps": args.steps, "n0": args.n0, "n": args.n,
            "alpha": args.alpha, "seed": args.seed,
            "seconds": seconds, "correct": cert.prediction == digit,
            "certified_edits": cert.certified_edits, "p_lower": cert.p_lower, "perturbed": cert.perturbed,
            "variants": len(variants), "covered_variants": sum(v.covered for v in variants),
            "smoothed_copies": int(counts.sum()), "smoothed_correct": int(counts[digit]),
            "smoothed_accuracy": float(counts[digit]) / float(counts.sum()),
            "estimation_correct": int(estimation[digit]), "estimation_copies": int(estimation.sum()),
        }
        if quality:
            chosen = unsmoothed_classes(smoother, text, quality, args.seed, 1)
            record["unsmoothed_accuracy"] = chosen.count(digit) / quality
            stock = chosen if stock_smoother is smoother else unsmoothed_classes(stock_smoother, text, quality, args.seed, 1)
            record["stock_unsmoothed_accuracy"] = stock.count(digit) / quality
            record["quality_samples"] = quality
        if variants_on:
            rows = measure_variants(text, digit, cert, smoother, stock_smoother, args, random.Random(f"{args.seed}:{index}"))
            record["rewordings"] = rows
        record["certificate"] = cert.to_record()
        record["seconds_total"] = time.perf_counter() - start
        records.append(record)
        extra = ""
        if quality:
            extra = f", unsmoothed acc {record['unsmoothed_accuracy']:.2f} (stock {record['stock_unsmoothed_accuracy']:.2f})"
        if variants_on:
            cov = [r for r in record["rewordings"] if r["covered"]]
            extra += (f", covered {len(cov)} keep(unsm/sm) {sum(r['keeps_unsmoothed'] for r in cov)}/"
                      f"{sum(r['keeps_smoothed'] for r in cov)}")
        print(f"{text!r}: digit {cert.prediction} (asked {digit}), {cert.certified_edits} edits, "
              f"p_lower {cert.p_lower:.3f}, smoothed acc {record['smoothed_accuracy']:.2f}{extra} "
              f"[{record['seconds_total']:.0f}s]", file=sys.stderr)
    return records


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def _share(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f} %)" if b else "0/0"


def _keeps(rows: list[dict], key: str) -> str:
    return _share(sum(bool(w.get(key)) for w in rows), len(rows))


def summary(records: list[dict]) -> str:
    """Two markdown tables per (encoder, protect, redundancy, keep) from benchmark records: the certificates and
    quality, then the rewordings (ordinary held-out ones and the injected other-digit words, covered or not)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (r.get("encoder", "stock"), bool(r.get("protect_digit", r.get("protect") is not None)),
               r.get("redundancy", 1), r.get("keep"))
        groups.setdefault(key, []).append(r)
    config = "| encoder | digit protected | redundancy | keep "
    head = (config + "| prompts | correct | certified r ≥ 1 | median p_lower | median r* | smoothed acc "
            "| unsmoothed acc (this encoder) | unsmoothed acc (stock) | smoothed / unsmoothed (stock) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    head2 = (config + "| covered rewordings | keep digit: unsmoothed / smoothed | not covered (sample) "
             "| keep digit: unsmoothed / smoothed | covered other-digit injections | keep digit: unsmoothed / smoothed "
             "| not covered other-digit edits | keep digit: unsmoothed / smoothed |")
    lines2 = [head2, "|" + "---|" * (head2.count("|") - 1)]
    for (encoder, protected, redundancy, keep), rs in groups.items():
        cfg = f"| {encoder} | {'yes' if protected else 'no'} | {redundancy} | {keep} "
        ok = [r for r in rs if "error" not in r]
        correct = sum(r["correct"] for r in ok)
        certified = sum(r["correct"] and r["certified_edits"] >= 1 for r in ok)
        p_med = statistics.median(r["p_lower"] for r in ok) if ok else float("nan")
        r_med = statistics.median(r["certified_edits"] for r in ok) if ok else float("nan")
        sm_acc = sum(r.get("smoothed_correct", 0) for r in ok) / max(1, sum(r.get("smoothed_copies", 0) for r in ok))
        q = [r for r in ok if "unsmoothed_accuracy" in r]
        un = statistics.fmean(r["unsmoothed_accuracy"] for r in q) if q else float("nan")
        un_stock = statistics.fmean(r["stock_unsmoothed_accuracy"] for r in q) if q else float("nan")
        ratio = sm_acc / un_stock if q and un_stock else float("nan")
        lines.append(cfg + f"| {len(rs)} | {_share(correct, len(ok))} | {_share(certified, len(ok))} | {p_med:.3f} "
                     f"| {r_med:g} | {sm_acc:.3f} | {un:.3f} | {un_stock:.3f} | {ratio:.3f} |")
        rows = [w for r in ok for w in r.get("rewordings", [])]
        cells = []
        for injected in (False, True):
            for covered in (True, False):
                sel = [w for w in rows if bool(w.get("injected")) == injected and w["covered"] == covered]
                cells += [str(len(sel)), f"{_keeps(sel, 'keeps_unsmoothed')} / {_keeps(sel, 'keeps_smoothed')}"]
        lines2.append(cfg + "| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(lines2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", type=lambda s: [int(d) for d in s.split(",")])
    parser.add_argument("--templates", type=int, default=3, help="held-out templates per digit")
    parser.add_argument("--redundancy", type=int, default=1, help="templates joined into one prompt")
    parser.add_argument("--protect-digit", action="store_true", help="protect the number word")
    parser.add_argument("--keep", type=int, default=1)
    parser.add_argument("--n0", type=int, default=20)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="stock",
                        help="stock (all-MiniLM-L6-v2, default), ablation (load_ablation_encoder()) or a sentence-transformers folder")
    parser.add_argument("--quality-samples", type=int, default=20,
                        help="unsmoothed generations per prompt for the unsmoothed accuracy (0: skip)")
    parser.add_argument("--no-variants", dest="variants", action="store_false", help="skip the rewording measurement")
    parser.add_argument("--variant-samples", type=int, default=8, help="unsmoothed generations per rewording (majority digit)")
    parser.add_argument("--variant-copies", type=int, default=20, help="smoothed (ablated) copies per rewording (majority digit)")
    parser.add_argument("--uncovered-variants", type=int, default=8, help="not covered rewordings sampled per prompt")
    parser.add_argument("--injected-variants", type=int, default=8,
                        help="rewordings per prompt that substitute another digit's word for one word (half as many for two)")
    parser.add_argument("--two-edit-variants", type=int, default=6, help="two-substitution rewordings per prompt when r* >= 2")
    parser.add_argument("--out", default="results/prompt_content.jsonl")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    parser.add_argument("--summary", metavar="JSONL", help="print a markdown table of the records in JSONL and exit")
    args = parser.parse_args(argv)
    if args.summary:
        records = [json.loads(line) for line in Path(args.summary).read_text(encoding="utf-8").splitlines() if line.strip()]
        print(summary(records))
        return 0
    torch.set_num_threads(1)
    records = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if args.append else "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    certified = [r for r in records if r.get("correct") and r["certified_edits"] >= 1]
    print(f"{len(certified)} of {len(records)} prompts certified with their own digit against one edit; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
