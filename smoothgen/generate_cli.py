"""`smoothgen generate`: SmoothGen from the command line (docs/theory.md §4).

Text (default): smoothed greedy decoding of a causal LM (`smoothgen.generative.SmoothedLM`), printed
with its certified prefix marked: by default with token ablation (docs/theory.md §4g), the prefix certified
against edited tokens; with ``--noise gaussian``, noise on the prompt's token embeddings and radii in
embedding distance.
Diffusion (``--diffusion --label k``): the class-conditional digits DDPM with noise on its class
embedding (`smoothgen.conditional.SmoothedConditionalDiffusion`): a PNG grid of base samples, smoothed
samples and the smoothed (mean) output, and the certificates of each.

Parsing lives in `add_parser`; `smoothgen.cli.main` turns any `SmoothgenError` into one line and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from smoothgen._lazy import lazy_module
from smoothgen.errors import InvalidParameterError, ResultsFileError
from smoothgen.results import write_atomically
from smoothgen.job_specs import GenerateJob
from smoothgen.text_generation import (
    ABLATION_LM,
    DEFAULT_DELETE_PROB,
    DEFAULT_KEEP_FRACTION,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_TEXT_SIGMA,
    DELETION_LM,
    certified_generation,
    decode_text,
    load_lm_spec,
)

torch = lazy_module("torch")  # imported on first use: `smoothgen generate --help` does not need it

#: σ on the digits DDPM's class embedding, in its units (class embeddings lie 9–12 apart:
#: `class_distances`): the largest σ at which the smoothed samples keep ≥ 95 % of the base samples'
#: quality (benchmarks/RESULTS.md, conditional diffusion).
DEFAULT_DIFFUSION_SIGMA = 0.5
DEFAULT_DIFFUSION_RADIUS = 1.0
DEFAULT_DIFFUSION_STEPS = 100
#: σ on the text-to-digit model's sentence embedding (unit norm): the largest σ trained at which smoothed
#: samples keep ≥ 95 % of the unsmoothed held-out accuracy (96 % at 0.05; README, embedded models).
DEFAULT_TEXT_DIFFUSION_SIGMA = 0.05
DEFAULT_TEXT_DIFFUSION_STEPS = 25
#: Markers around the certified part of the generation in the text output.
CERTIFIED_OPEN, CERTIFIED_CLOSE = "\u27e6", "\u27e7"


class _Progress:
    """The progress bar of a generation on stderr (tqdm; none with --no-progress): one bar per phase.

    Call it as `SmoothedLM.generate`'s progress(phase, done, total), or open a phase with `phase` and
    advance it by a number of samples (the `on_batch` hook of the sampler the generator draws with). A
    phase's bar appears with its first progress, so an argument refused before any work prints one line.
    """

    UNITS = {"choose tokens": "token", "certify": "copy"}

    def __init__(self, disabled: bool):
        self.disabled = disabled
        self.name: str | None = None
        self.total, self.unit = 0, "step"
        self.bar: Any = None

    def phase(self, name: str, total: int, unit: str) -> None:
        self.close()
        self.name, self.total, self.unit = name, total, unit

    def advance(self, count: int) -> None:
        if self.name is None:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.name, unit=self.unit, file=sys.stderr, disable=self.disabled,
                            dynamic_ncols=True)
        self.bar.update(count)

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self.name:
            self.phase(name, total, self.UNITS.get(name, "step"))
        self.advance(done - (self.bar.n if self.bar is not None else 0))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = self.name = None


def add_parser(sub: Any) -> None:
    from smoothgen.cli_help import DefaultsFormatter  # called by smoothgen.cli while it builds its parser

    gen = sub.add_parser(
        "generate",
        help="smoothed generation with certificates: an LM whose output is certified against edited prompt tokens "
        "(or noisy prompt embeddings), or the digits DDPM with a noisy class embedding (SmoothGen)",
        description="Text (default): decode greedily from the smoothed next-token decision over noisy copies of the "
        "prompt and certify a prefix: the tokens between "
        f"{CERTIFIED_OPEN} and {CERTIFIED_CLOSE} are generated unchanged for every prompt with at most --edits "
        "substituted tokens (--noise ablate, the default: each copy keeps --keep random prompt positions and masks "
        "the others, and votes with its greedy choice), or for every perturbation of the prompt embeddings of "
        "Frobenius norm <= --radius (--noise gaussian), with probability >= 1 - alpha over the sampling. With no "
        "arguments: the embedded byte-level LM trained on the Python standard library, fine-tuned under that "
        "ablation, on a three-line prompt whose first two lines may be edited. "
        "--diffusion --label k: the embedded class-conditional digits DDPM with noise on its class embedding; "
        "writes a PNG grid (base samples, smoothed samples, smoothed mean) and prints the TV bound on one sample "
        "and the certificate of the mean image.",
        formatter_class=DefaultsFormatter,
    )
    gen.add_argument("--sigma", type=float, default=None,
                     help=f"noise sigma in embedding space; gives Gaussian noise for text (default: {DEFAULT_TEXT_SIGMA} "
                     f"for text with --noise gaussian, {DEFAULT_DIFFUSION_SIGMA} for --diffusion, "
                     f"{DEFAULT_TEXT_DIFFUSION_SIGMA} for --text)")
    gen.add_argument("--samples", type=int, default=GenerateJob.n,
                     help="noisy copies N: estimation copies for text, samples averaged for --diffusion")
    gen.add_argument("--radius", type=float, default=None,
                     help="l2 radius in embedding space at which the certificate is reported (default: 0 for text, "
                     f"where the prefix at 0 is what the smoothed decoder certifiably outputs; {DEFAULT_DIFFUSION_RADIUS} "
                     "for --diffusion)")
    gen.add_argument("--alpha", type=float, default=GenerateJob.alpha, help="failure probability of the certificate")
    gen.add_argument("--seed", type=int, default=0, help="seed of the random streams")
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    gen.add_argument("--json", action="store_true", help="print the certificate as one JSON object instead of text")
    gen.add_argument("--out", help="also write the JSON record to this file (written whole, atomically)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing --out (or --png)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    text = gen.add_argument_group("text (the default)")
    text.add_argument("--prompt", default=None, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    text.add_argument("--model", default=None,
                      help="package.module:factory returning a causal LM that accepts inputs_embeds (smoothgen's "
                      "CodeLM or a transformers model), hf:FOLDER (a local transformers model and tokenizer; "
                      "needs the hf extra; nothing is downloaded), or embedded:NAME, an embedded LM: code_lm and its "
                      "fine-tunes (byte-level), code_bpe and code_bpe_delete0.9 (word-piece tokens, so edits count word "
                      "pieces) (default: the embedded byte-level LM; with --noise "
                      f"ablate its fine-tune {ABLATION_LM}, with --noise delete {DELETION_LM})")
    text.add_argument("--selection-samples", type=int, default=GenerateJob.n0,
                      help="noisy copies n0 that choose each token (disjoint from the --samples that certify it; with "
                           "--noise delete each keeps the mean number of perturbed tokens, so they run as one batch); for "
                           "a text LM, 0 lets the model's own greedy decoding of the clean prompt choose (the cost of "
                           "plain generation: the certified prefix is the part of the model's own output that the "
                           "smoothed decoder also gives, up to the first token the noisy copies do not back)")
    text.add_argument("--max-new-tokens", type=int, default=None,
                      help=f"tokens to generate (alpha is split across them) (default: {DEFAULT_MAX_NEW_TOKENS})")
    text.add_argument("--perturb", default=None, choices=["all", "context", "last"],
                      help="which prompt positions carry noise (and may be edited or attacked; the others are held "
                      "fixed): all; context: every line before the last one (the line being completed is fixed); last: "
                      "only the last token (default: context with --noise ablate and a prompt of several lines, else all)")
    gen.add_argument("--batch-size", type=int, default=GenerateJob.batch_size,
                     help="noisy copies per model call (for text, each chunk keeps its KV cache)")
    text.add_argument("--noise", default=None, choices=["ablate", "delete", "gaussian"],
                      help="gaussian: noise of --sigma on the prompt's token embeddings (radii in embedding distance); "
                      "ablate: each copy keeps --keep random prompt positions and masks the others (docs/theory.md §4g: the "
                      "certificate is stated in substituted tokens; each copy votes with its greedy choice); delete: each "
                      "copy deletes every perturbed token with probability --delete-prob (§4j: the certificate is stated "
                      "in inserted, deleted or substituted tokens) (default: gaussian "
                      "when --sigma or --radius is given, else ablate; with --text: gaussian on the sentence embedding, "
                      "or ablate over the prompt's tokens before the encoder)")
    text.add_argument("--keep", type=int, default=None,
                      help=f"with --noise ablate: prompt positions each copy keeps (default: {DEFAULT_KEEP_FRACTION:g} of "
                      "the perturbed positions, rounded, at least 1); any r substituted tokens are covered while L_t > 1/2 + "
                      "1 - C(P-r, keep)/C(P, keep)")
    text.add_argument("--delete-prob", type=float, default=None,
                      help=f"with --noise delete: probability p that a copy deletes each perturbed token (default "
                      f"{DEFAULT_DELETE_PROB}); any r edits are covered while L_t > 1/2 + 1 - p^r")
    text.add_argument("--mask-token", type=int, default=None,
                      help="with --noise ablate: the token id that replaces dropped positions; with --noise delete: the "
                      "token a copy with nothing left is fed (--perturb all) (default: byte 0 for the embedded "
                      "byte-level LMs; the tokenizer's mask or unknown token for hf: models)")
    text.add_argument("--edits", type=int, default=None,
                      help="with --noise ablate or delete: report the prefix certified against this many edited tokens "
                      "(substituted; for delete also inserted or deleted) (default 1)")
    text.add_argument("--sequential", action="store_true",
                      help="with --noise ablate or delete: draw the estimation copies --check-every at a time and stop "
                      "as soon as the prefix at --edits is decided (each step's betting confidence sequence, anytime "
                      "valid: as sound as a fixed --samples, which becomes the maximum; docs/theory.md §6)")
    text.add_argument("--check-every", type=int, default=None,
                      help="with --sequential: estimation copies between two checks (default 50)")
    text.add_argument("--exhaustive", action="store_true",
                      help="with --noise ablate: also decode exactly (every kept subset, no sampling) at every prompt with "
                      "one substituted token and report whether any changes the prefix certified at one edit "
                      "(small prompts and vocabularies only)")
    diff = gen.add_argument_group("conditional diffusion (--diffusion)")
    diff.add_argument("--diffusion", action="store_true", help="smooth the embedded class-conditional digits DDPM")
    diff.add_argument("--text", default=None, metavar="PROMPT",
                      help="smooth the embedded text-to-digit model (a diffusers UNet conditioned on the all-MiniLM-L6-v2 "
                      "embedding of PROMPT, e.g. 'a handwritten seven'), with noise of --sigma on that embedding "
                      f"(default {DEFAULT_TEXT_DIFFUSION_SIGMA}), or with --noise ablate over the prompt's tokens before "
                      "the encoder (keep --keep of them, mask the others; the certificate covers any --edits substituted "
                      "tokens outside --protect): writes a PNG grid of smoothed samples and prints the "
                      "certified content (the digit the clean digits classifier sees, Cohen's CERTIFY with "
                      "--selection-samples and --samples) and which rewordings of the prompt it covers")
    diff.add_argument("--protect", default=None, metavar="SPEC",
                      help="with --text --noise ablate: prompt tokens never ablated and never edited, held fixed in "
                      "every copy: a substring of the prompt (every token overlapping any occurrence, e.g. 'seven'), or "
                      "pos:I,J,... (token positions, 0 = the tokenizer's [CLS]). Derived once from this prompt, then "
                      "fixed: edits there are not covered. Without it, content held by one or two tokens cannot be "
                      "certified against one edit (docs/theory.md §4g)")
    diff.add_argument("--encoder", default=None, choices=list(TEXT_ENCODERS),
                      help="with --text --noise ablate: the sentence encoder in front of the UNet. ablation (the default): "
                      "all-MiniLM-L6-v2 with the embedded adapter trained on ablated sentences (models.load_ablation_encoder; "
                      "on held-out prompts it certifies far more at the same quality, benchmarks/RESULTS.md); stock: the "
                      "packaged all-MiniLM-L6-v2, which never saw [MASK] (the Gaussian path always uses it)")
    diff.add_argument("--label", type=int, default=None, help="the digit class k to generate (0-9); needs --diffusion")
    diff.add_argument("--steps", type=int, default=None,
                      help=f"sampling steps (default: {DEFAULT_DIFFUSION_STEPS} DDPM steps respaced from 1000 with "
                      f"--diffusion, {DEFAULT_TEXT_DIFFUSION_STEPS} DDIM steps with --text)")
    diff.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight w >= 0 (default: 0)")
    diff.add_argument("--png", default=None, help="the PNG grid to write (default: results/generate_label{k}.png, or "
                      "results/generate_text.png with --text)")
    gen.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from smoothgen.validate import check_alpha, check_count, check_device, check_positive

    if args.text is not None:
        if args.diffusion or args.label is not None:
            raise InvalidParameterError("--text smooths the text-to-digit model: it takes no --diffusion or --label")
        for option, value in (("--prompt", args.prompt), ("--model", args.model), ("--max-new-tokens", args.max_new_tokens),
                              ("--radius", args.radius), ("--perturb", args.perturb), ("--exhaustive", args.exhaustive or None),
                              ("--sequential", args.sequential or None), ("--check-every", args.check_every)):
            if value is not None:
                raise InvalidParameterError(f"{option} applies to text generation, not with --text")
        if not args.text.strip():
            raise InvalidParameterError("--text needs a prompt, e.g. --text 'a handwritten seven'")
        if args.noise == "delete" or args.delete_prob is not None:
            raise InvalidParameterError("--noise delete applies to text generation; --text takes --noise gaussian or ablate")
        args.noise = "gaussian" if args.noise is None else args.noise
        ablate = args.noise == "ablate"
        if ablate and args.sigma is not None:
            raise InvalidParameterError("--sigma applies to Gaussian noise; with --text --noise ablate the certificate is in --edits")
        if not ablate:
            for option, value in (("--keep", args.keep), ("--edits", args.edits), ("--protect", args.protect),
                                  ("--mask-token", args.mask_token), ("--encoder", args.encoder)):
                if value is not None:
                    raise InvalidParameterError(f"{option} applies with --text --noise ablate")
        args.steps = DEFAULT_TEXT_DIFFUSION_STEPS if args.steps is None else args.steps
        args.guidance = 0.0 if args.guidance is None else args.guidance
        check_device(args.device, "--device")
        if ablate:
            args.edits = 1 if args.edits is None else check_count(args.edits, "--edits", minimum=0)
            if args.keep is not None:
                check_count(args.keep, "--keep")
            if args.mask_token is not None:
                check_count(args.mask_token, "--mask-token", minimum=0)
            args.protect = _parse_protect(args.protect, args.text)
        else:
            args.sigma = DEFAULT_TEXT_DIFFUSION_SIGMA if args.sigma is None else args.sigma
            check_positive(args.sigma, "--sigma")
        check_count(args.samples, "--samples")
        check_count(args.selection_samples, "--selection-samples")
        check_alpha(args.alpha)
        out = _check_out(args.out, args.overwrite, ".json")
        record = _generate_text_digits_ablated(args) if ablate else _generate_text_digits(args)
        if out is not None:
            write_atomically(out, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n", encoding="utf-8"))
        if args.json:
            print(json.dumps(record))
        return 0
    if args.diffusion:
        for option, value in (("--prompt", args.prompt), ("--model", args.model),
                              ("--max-new-tokens", args.max_new_tokens)):
            if value is not None:
                raise InvalidParameterError(f"{option} applies to text generation, not with --diffusion")
        if args.label is None:
            raise InvalidParameterError("--diffusion needs --label k (the digit class to generate)")
        args.steps = DEFAULT_DIFFUSION_STEPS if args.steps is None else args.steps
        args.guidance = 0.0 if args.guidance is None else args.guidance
    if args.protect is not None:
        raise InvalidParameterError("--protect applies with --text --noise ablate (text generation holds positions fixed "
                                    "with --perturb)")
    if not args.diffusion:
        for option, value in (("--label", args.label), ("--png", args.png), ("--steps", args.steps),
                              ("--guidance", args.guidance)):
            if value is not None:
                raise InvalidParameterError(f"{option} applies only with --diffusion")
        args.max_new_tokens = DEFAULT_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    check_device(args.device, "--device")
    if args.noise is None:  # --sigma or --radius name Gaussian noise; text otherwise defaults to token ablation
        args.noise = "gaussian" if args.diffusion or args.sigma is not None or args.radius is not None else "ablate"
    ablate = not args.diffusion and args.noise in ("ablate", "delete")  # certificates in edited tokens
    if not ablate:
        for option, value in (("--keep", args.keep), ("--mask-token", args.mask_token), ("--edits", args.edits)):
            if value is not None:
                raise InvalidParameterError(f"{option} applies with --noise ablate")
        if args.exhaustive:
            raise InvalidParameterError("--exhaustive applies with --noise ablate")
    elif args.sigma is not None or args.radius is not None:
        raise InvalidParameterError(f"--sigma and --radius apply to Gaussian noise; with --noise {args.noise} the "
                                    "certificate is in --edits")
    if (args.sequential or args.check_every is not None) and not ablate:
        raise InvalidParameterError("--sequential and --check-every apply with --noise ablate or delete (vote shares)")
    if args.check_every is not None and not args.sequential:
        raise InvalidParameterError("--check-every applies with --sequential")
    if args.check_every is not None:
        check_count(args.check_every, "--check-every")
    if args.noise != "delete" and args.delete_prob is not None:
        raise InvalidParameterError("--delete-prob applies with --noise delete")
    if args.noise == "delete":
        if args.keep is not None:
            raise InvalidParameterError("--keep applies with --noise ablate; --noise delete takes --delete-prob")
        if args.exhaustive:
            raise InvalidParameterError("--exhaustive checks substitutions under --noise ablate; under --noise delete "
                                        "use SmoothedLM.exact_decode (tests/test_deletion.py checks every single edit)")
        from smoothgen.deletion import check_delete_prob

        args.delete_prob = DEFAULT_DELETE_PROB if args.delete_prob is None else check_delete_prob(args.delete_prob, "--delete-prob")
    if args.diffusion and args.noise != "gaussian":
        raise InvalidParameterError(f"--noise {args.noise} applies to text generation, not with --diffusion")
    if args.sigma is None and not ablate:
        args.sigma = DEFAULT_DIFFUSION_SIGMA if args.diffusion else DEFAULT_TEXT_SIGMA
    if not ablate:
        check_positive(args.sigma, "--sigma")
    check_count(args.samples, "--samples")
    if ablate:
        args.edits = 1 if args.edits is None else check_count(args.edits, "--edits", minimum=0)
        args.radius = float(args.edits)
    elif args.radius is None:
        args.radius = DEFAULT_DIFFUSION_RADIUS if args.diffusion else 0.0
    check_positive(args.radius, "--radius", allow_zero=True)
    check_alpha(args.alpha)
    out = _check_out(args.out, args.overwrite, ".json")
    if args.diffusion:
        record = _generate_diffusion(args)
    else:
        record = _generate_text(args)
    if out is not None:
        write_atomically(out, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n", encoding="utf-8"))
    if args.json:
        print(json.dumps(record))
    return 0


# ------------------------------------------------------------------------------------------------ text


def _generate_text(args: argparse.Namespace) -> dict[str, Any]:
    from smoothgen.validate import check_count

    check_count(args.selection_samples, "--selection-samples", minimum=0)
    check_count(args.max_new_tokens, "--max-new-tokens")
    check_count(args.batch_size, "--batch-size")
    model, tokenizer, name = load_lm_spec(args.model, args.device, args.noise)
    prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
    progress = _Progress(args.no_progress)
    try:
        job = GenerateJob(prompt=prompt, noise=args.noise, sigma=args.sigma, keep=args.keep, mask_token=args.mask_token,
                          perturb=args.perturb, max_new_tokens=args.max_new_tokens, n0=args.selection_samples,
                          n=args.samples, alpha=args.alpha, seed=args.seed, edits=args.edits,
                          delete_prob=args.delete_prob, sequential=args.sequential, check_every=args.check_every,
                          radius=args.radius, batch_size=args.batch_size)
        record, cert, smoothed = certified_generation(
            model, tokenizer, name, **job.kwargs(), progress=progress,
            check=_check_exhaustive if args.noise == "ablate" and args.exhaustive else None)
    finally:
        progress.close()
    args.perturb = record["perturb"]
    if args.noise in ("ablate", "delete"):
        if args.exhaustive:
            record["exhaustive"] = _exhaustive_check(smoothed, cert, args.no_progress)
        if not args.json:
            _print_ablated(record, cert, tokenizer)
    elif not args.json:
        _print_text(record, cert, tokenizer)
    return record


#: The most kept subsets --exhaustive enumerates per edited prompt (exact decoding is C(P, keep) model rows).
EXHAUSTIVE_MAX_SUBSETS = 5_000


def _check_exhaustive(smoothed: Any, ids: torch.Tensor) -> None:
    """--exhaustive decodes C(P, keep) subsets per edited prompt: refused before generating when too many."""
    import math

    perturbed = int(smoothed.prompt_mask(ids).sum())
    keep = min(smoothed.noise.keep, perturbed)
    if math.comb(perturbed, keep) > EXHAUSTIVE_MAX_SUBSETS:
        raise InvalidParameterError(
            f"--exhaustive decodes every kept subset at every edited prompt: C({perturbed}, {keep}) = "
            f"{math.comb(perturbed, keep)} subsets exceed {EXHAUSTIVE_MAX_SUBSETS}; use a shorter prompt or a smaller "
            "--keep")


def _exhaustive_check(smoothed: Any, cert: Any, no_progress: bool = True) -> dict[str, Any]:
    """Exact decoding at every prompt with one substituted token (every perturbed position, every other
    token): how many change the prefix certified at one edit. Exact (all subsets), so a change is a failure
    of the certificate (probability <= alpha) or a bug, never sampling noise."""
    steps = cert.prefix_at(1)
    prompt = list(cert.prompt)
    positions = [p for p, on in enumerate(cert.mask) if on]
    if steps == 0:
        return {"certified_steps": 0, "edited_prompts": 0, "changed": 0}
    changed = checked = 0
    progress = _Progress(no_progress)
    progress.phase("exhaustive check", len(positions) * (smoothed.vocab_size - 1), "prompt")
    try:
        for pos in positions:
            for tok in range(smoothed.vocab_size):
                if tok == prompt[pos]:
                    continue
                edited = list(prompt)
                edited[pos] = tok
                tokens, _ = smoothed.exact_decode(edited, steps, mask=list(cert.mask), max_subsets=EXHAUSTIVE_MAX_SUBSETS)
                changed += tokens[:steps] != cert.tokens[:steps]
                checked += 1
                progress.advance(1)
    finally:
        progress.close()
    return {"certified_steps": steps, "edited_prompts": checked, "changed": changed}


def _print_marked(record: dict[str, Any], cert: Any, tokenizer: Any) -> int:
    """Print the prompt and the generation with its certified prefix between the markers; returns its length."""
    k = cert.certified_prefix
    rest = decode_text(cert.tokens[k:], tokenizer)
    print(f"{record['prompt']}{CERTIFIED_OPEN}{record['certified_text']}{CERTIFIED_CLOSE}{rest}")
    print()
    return k


def _print_ablated(record: dict[str, Any], cert: Any, tokenizer: Any) -> None:
    k = _print_marked(record, cert, tokenizer)
    if cert.noise == "deletion":
        noise = (f"token deletion: each of {record['perturbed_positions']} prompt positions deleted with probability "
                 f"{cert.delete_prob:g}")
    else:
        noise = (f"token ablation: keep {cert.keep} of {record['perturbed_positions']} prompt positions (mask token "
                 f"{record['mask_token']})")
    drawn = f"n={cert.n} (sequential, at most {cert.max_samples})" if cert.sequential else f"n={cert.n}"
    print(f"model {record['model']}, {noise}, {_selection(cert)}, {drawn}, alpha={cert.alpha}, "
          f"{len(cert.tokens)} tokens in {record['seconds']:.1f} s")
    edits = record["edits"]
    kind = "inserted, deleted or substituted" if cert.noise == "deletion" else "edited"
    noun = f"{kind} token" if edits == 1 else f"{kind} tokens"
    where = _where(record, cert)
    if k:
        print(f"robust to any {edits} {noun} {where}: the first {k} of {len(cert.tokens)} generated tokens (between "
              f"{CERTIFIED_OPEN} {CERTIFIED_CLOSE}) are the same for every such prompt, with probability >= "
              f"{1 - cert.alpha:g}")
    else:
        print(f"not certified against {edits} {noun} {where}: the first generated token's smoothed vote is not "
              f"certifiably above 1/2 + Delta_{edits}")
    whole = record["whole_generation_edits"]
    print(f"the whole generation is robust to any {whole} {kind} token{'s' if whole != 1 else ''} {where}" if whole >= 1
          else "the whole generation is not certified against one edited token (at some step the chosen token's smoothed "
          "score is not certifiably above 1/2 + Delta_1)")
    if "exhaustive" in record:
        ex = record["exhaustive"]
        print(f"exhaustive check: {ex['edited_prompts']} prompts with one substituted token decoded exactly; "
              f"{ex['changed']} changed the {ex['certified_steps']} tokens certified at one edit")


def _selection(cert: Any) -> str:
    """Who chose the tokens, in words."""
    if not cert.n0:
        return "n0=0 (the model's own greedy decoding chose the tokens)"
    if cert.selection == "equal-length":
        from smoothgen.deletion import TokenDeletion

        perturbed = sum(cert.mask)
        kept = TokenDeletion(cert.delete_prob).selection_size(perturbed)
        return f"n0={cert.n0} (selection copies keeping {kept} of the {perturbed} positions each)"
    return f"n0={cert.n0}"


def _where(record: dict[str, Any], cert: Any) -> str:
    """Where the certified edits may fall, in words (the perturbed positions of --perturb)."""
    length, perturbed = len(cert.prompt), record["perturbed_positions"]
    if record["perturb"] == "context":
        if cert.noise == "deletion":
            return (f"in the lines before the last one (the first {perturbed} of {length} prompt tokens; every prompt "
                    "with the same last line is covered)")
        return f"in the lines before the last one (the first {perturbed} of {length} prompt tokens; the last line is held fixed)"
    if record["perturb"] == "last":
        return "in the prompt's last token" if cert.noise != "deletion" else "at the prompt's end (the tokens before it fixed)"
    return "anywhere in the prompt"


def _print_text(record: dict[str, Any], cert: Any, tokenizer: Any) -> None:
    k = _print_marked(record, cert, tokenizer)
    print(f"model {record['model']}, sigma={cert.sigma}, {_selection(cert)}, n={cert.n}, alpha={cert.alpha}, "
          f"{len(cert.tokens)} tokens in {record['seconds']:.1f} s")
    whole = record["whole_generation_radius"]
    print(f"certified prefix at radius {cert.radius:g}: {k} of {len(cert.tokens)} tokens (between "
          f"{CERTIFIED_OPEN} {CERTIFIED_CLOSE}); "
          + (f"the whole generation is certified below radius {whole:.4g}" if whole > 0 else
             "the whole generation is not certified (at some step the chosen token's smoothed probability "
             "is not certifiably above 1/2)"))
    print(f"a single-token substitution in the perturbed prompt moves its embedding by at least "
          f"{record['min_substitution_radius']:.4g}: "
          + ("the certificate covers some substitutions" if cert.radius >= record["min_substitution_radius"]
             else "this radius covers no whole-token substitution, only smaller embedding perturbations"))


# ------------------------------------------------------------------------------------------------ diffusion


def _generate_diffusion(args: argparse.Namespace) -> dict[str, Any]:
    from smoothgen.conditional import SmoothedConditionalDiffusion
    from smoothgen.models import load_ddpm
    from smoothgen.models.ddpm import sample
    from smoothgen.validate import check_count, check_positive

    check_count(args.steps, "--steps")
    check_count(args.batch_size, "--batch-size")
    check_positive(args.guidance, "--guidance", allow_zero=True)
    png = _check_out(args.png or f"results/generate_label{args.label}.png", args.overwrite, ".png")
    ddpm = load_ddpm().to(args.device)
    smoothed = SmoothedConditionalDiffusion(ddpm, args.sigma, guidance=args.guidance, num_steps=args.steps,
                                            batch_size=args.batch_size)
    start = time.perf_counter()
    shown = min(8, args.samples)
    progress = _Progress(args.no_progress)
    progress.phase("sample", args.samples + shown + smoothed.num_classes * SCALE_SAMPLES, "sample")
    smoothed.sampler.on_batch = progress.advance
    try:
        mean = smoothed.certify_mean(args.label, radius=args.radius, n=args.samples, alpha=args.alpha, seed=args.seed)
        tv = smoothed.tv_bound(args.radius, label=args.label)
        noisy = smoothed.samples(args.label, n=shown, seed=args.seed, request_id=1)
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        labels = torch.full((shown,), args.label, dtype=torch.long, device=args.device)
        with torch.no_grad():
            base = sample(ddpm, labels, generator, args.guidance, num_steps=args.steps)
        scale = _mean_image_scale(smoothed, args, mean.to_record())
    finally:
        smoothed.sampler.on_batch = None
        progress.close()
    seconds = time.perf_counter() - start
    _write_grid(png, base.cpu(), noisy.cpu(), mean.mean.cpu(), args)
    distances = smoothed.class_distances(args.label)
    record = {
        "model": "embedded:digits_ddpm",
        "label": args.label,
        "steps": args.steps,
        "guidance": args.guidance,
        "png": str(png),
        "seconds": seconds,
        "nearest_other_label_distance": float(min(d for j, d in enumerate(distances) if j != args.label)),
        "mean_certificate": mean.to_record(),
        "sample_tv_bound": tv.to_record(),
        "scale": scale,
    }
    if not args.json:
        m = record["mean_certificate"]
        print(f"wrote {png}: {shown} base samples of digit {args.label}, {shown} smoothed samples (sigma={args.sigma} "
              f"on the class embedding), and the mean of {args.samples} smoothed samples ({seconds:.1f} s)")
        print(f"one smoothed sample, any conditioning move of l2 norm <= {args.radius:g}: TV <= {tv.tv:.4f}, "
              f"W1 (l2 on images) <= {tv.w1_l2:.4f}" + (" (vacuous: TV 1 allows any other output)" if tv.tv >= 1.0 else ""))
        print(f"the mean image: moves by at most {m['expectation_bound']:.4f} in l2 in expectation; two runs of "
              f"{args.samples} samples differ by at most {m['empirical_bound']:.4f} (probability >= 1 - 2*alpha)")
        _print_mean_image_scale(scale, args, m)
        print(f"the nearest other digit's embedding is {record['nearest_other_label_distance']:.3f} away; "
              f"labels covered at this radius: {list(tv.covered_labels) or 'none'}")
    return record


#: Smoothed samples per digit whose mean stands for "the output of another input" in the scale of the mean
#: image's certificate (every digit's, this one's included, so all means carry the same sampling noise).
SCALE_SAMPLES = 16


def _mean_image_scale(smoothed: Any, args: argparse.Namespace, certificate: dict[str, Any]) -> dict[str, Any]:
    """What the mean image's l2 bounds mean: the diameter of the output space ([0, 1]^k images), the distances
    from this digit's mean image to the other digits' (means of SCALE_SAMPLES smoothed samples each), and
    whether each bound is vacuous (at least the diameter, or at least the distance to the closest other digit's
    mean: the certificate then allows the mean image to become another digit's)."""
    means = torch.stack([
        smoothed.samples(j, n=SCALE_SAMPLES, seed=args.seed, request_id=2 + j).double().mean(dim=0).flatten()
        for j in range(smoothed.num_classes)
    ])
    distances = (means - means[args.label]).norm(dim=1).tolist()
    others = {j: d for j, d in enumerate(distances) if j != args.label}
    closest = min(others, key=others.get)
    diameter = float(smoothed.image_diameter)

    def vacuous(bound: float) -> bool:
        return bound >= diameter or bound >= others[closest]

    return {
        "diameter": diameter,
        "pixels": int(smoothed.image_numel),
        "samples_per_label": SCALE_SAMPLES,
        "other_label_mean_distances": {str(j): d for j, d in others.items()},
        "median_other_label_mean_distance": float(statistics.median(others.values())),
        "closest_other_label": closest,
        "closest_other_label_mean_distance": others[closest],
        "expectation_bound_vacuous": vacuous(certificate["expectation_bound"]),
        "empirical_bound_vacuous": vacuous(certificate["empirical_bound"]),
    }


def _print_mean_image_scale(scale: dict[str, Any], args: argparse.Namespace, certificate: dict[str, Any]) -> None:
    closest, far = scale["closest_other_label"], scale["closest_other_label_mean_distance"]
    print(f"scale: two images of {scale['pixels']} pixels in [0, 1] are at most {scale['diameter']:g} apart in l2 (the "
          f"diameter); the mean images of the other digits ({scale['samples_per_label']} smoothed samples each) lie "
          f"{scale['median_other_label_mean_distance']:.3g} from digit {args.label}'s (median), the closest "
          f"(digit {closest}) {far:.3g}")

    def verdict(bound: float) -> str:
        if bound >= scale["diameter"]:
            return f"{bound:.3g} is VACUOUS: at least the diameter {scale['diameter']:g}, it allows any image"
        if bound >= far:
            return f"{bound:.3g} is VACUOUS at this scale: it reaches the mean image of digit {closest} ({far:.3g} away)"
        return f"{bound:.3g} is below the {far:.3g} to the closest other digit's mean image"

    print(f"so the bound in expectation {verdict(certificate['expectation_bound'])}; the bound on two runs "
          f"{verdict(certificate['empirical_bound'])}")


def _generate_text_digits(args: argparse.Namespace) -> dict[str, Any]:
    """--text: the text-to-digit model, its certified content and the rewordings it covers."""
    from smoothgen.models import load_classifier, load_text_ddpm, text_digits
    from smoothgen.validate import check_count, check_positive

    check_count(args.steps, "--steps")
    check_count(args.batch_size, "--batch-size")
    check_positive(args.guidance, "--guidance", allow_zero=True)
    png = _check_out(args.png or "results/generate_text.png", args.overwrite, ".png")
    start = time.perf_counter()
    smoothed = text_digits.smoothed_text_digits(load_text_ddpm().to(args.device), args.sigma, num_steps=args.steps,
                                                guidance=args.guidance, batch_size=args.batch_size)
    # The prompt is encoded once: the certificate is computed at this embedding and the rewordings are
    # measured from it (docs/theory.md §4f).
    encoder = text_digits.load_text_encoder()
    embedding = text_digits.encode_prompts([args.text], encoder)[0].to(args.device)
    shown = 8
    progress = _Progress(args.no_progress)
    progress.phase("sample", args.selection_samples + args.samples + shown, "sample")
    smoothed.sampler.on_batch = progress.advance
    try:
        cert = smoothed.certify_content(load_classifier(0.0).to(args.device), prompt_embeds=embedding,
                                        n0=args.selection_samples, n=args.samples, alpha=args.alpha, seed=args.seed)
        noisy = smoothed.samples(prompt_embeds=embedding, n=shown, seed=args.seed, request_id=1)
    finally:
        smoothed.sampler.on_batch = None
        progress.close()
    variants = text_digits.covered_variants(args.text, cert, embedding=embedding, encoder=encoder)
    seconds = time.perf_counter() - start
    _draw_grid(png, [(f"smoothed samples (σ={args.sigma:g} on the prompt embedding)", noisy.cpu())],
               f"{args.text!r}: text-to-digit UNet, all-MiniLM-L6-v2 conditioning")
    covered = [v for v in variants if v.covered]
    record = {
        "model": "embedded:text_digits_ddpm", "text": args.text, "steps": args.steps, "guidance": args.guidance,
        "png": str(png), "seconds": seconds, "content_certificate": cert.to_record(),
        "variants": [dataclasses.asdict(v) for v in variants],
        "covered_variants": len(covered),
    }
    if not args.json:
        print(f"wrote {png}: {shown} smoothed samples of {args.text!r} (sigma={args.sigma} on its sentence embedding; "
              f"{seconds:.1f} s)")
        if cert.abstained:
            print(f"content not certified (ABSTAIN): the classifier's majority on the generated images is not "
                  f"certifiably above 1/2 (p_lower = {cert.p_lower:.3f})")
        else:
            print(f"certified content: digit {cert.prediction} for every prompt embedding within {cert.radius:.4f} "
                  f"(l2) of this prompt's, with probability >= {1 - cert.alpha:g} (p_lower = {cert.p_lower:.3f}, "
                  f"n0={cert.n0}, n={cert.n})")
        print(f"rewordings measured with the real encoder: {len(covered)} of {len(variants)} covered")
        for v in covered:
            print(f"  covered    {v.distance:.4f}  {v.kind:<12} {v.text!r}")
        for v in [v for v in variants if not v.covered][:5]:
            print(f"  uncovered  {v.distance:.4f}  {v.kind:<12} {v.text!r}")
    return record


def _parse_protect(spec: str | None, text: str) -> Any:
    """--protect: None, "pos:I,J,..." (token positions) or a substring of the prompt."""
    if spec is None:
        return None
    if spec.startswith("pos:"):
        items = [item.strip() for item in spec[4:].split(",")]
        if not items or not all(item.isdigit() for item in items):
            raise InvalidParameterError(f"--protect {spec!r}: pos: takes token positions I,J,... (integers >= 0)")
        return [int(item) for item in items]
    if not spec:
        raise InvalidParameterError("--protect needs a substring of the prompt or pos:I,J,...")
    if spec not in text:
        raise InvalidParameterError(f"--protect {spec!r} does not occur in the prompt {text!r}")
    return spec


def _load_stock_encoder():
    from smoothgen.models import text_digits

    return text_digits.load_text_encoder()


def _load_ablation_encoder():
    from smoothgen.models import load_ablation_encoder

    return load_ablation_encoder()


#: --encoder of --text --noise ablate: its loaders. The default is the one trained for the ablation.
TEXT_ENCODERS = {"ablation": _load_ablation_encoder, "stock": _load_stock_encoder}
DEFAULT_TEXT_ENCODER = "ablation"


def _encoder_name(choice: str) -> str:
    from smoothgen.models import text_digits

    return text_digits.ENCODER_NAME if choice == "stock" else f"{text_digits.ENCODER_NAME} + minilm_ablation adapter"


#: Copies drawn for the PNG grid of --text.
GRID_SAMPLES = 8


def _generate_text_digits_ablated(args: argparse.Namespace) -> dict[str, Any]:
    """--text --noise ablate: the text-to-digit model smoothed over its prompt's tokens, its content certified
    against --edits substituted tokens outside --protect, and the rewordings that are such substitutions."""
    from smoothgen.models import load_classifier, load_text_ddpm, text_digits
    from smoothgen.prompt_content import perturbed_positions, tokenize
    from smoothgen.validate import check_count, check_positive

    check_count(args.steps, "--steps")
    check_count(args.batch_size, "--batch-size")
    check_positive(args.guidance, "--guidance", allow_zero=True)
    png = _check_out(args.png or "results/generate_text.png", args.overwrite, ".png")
    start = time.perf_counter()
    # --protect and --keep are checked on the prompt's tokens before any model is loaded.
    ids, offsets, special = tokenize(text_digits.load_text_tokenizer(), args.text)
    mask, _, _ = perturbed_positions([True] * len(ids), args.protect, 0, args.text, offsets, special)
    keep = max(1, round(DEFAULT_KEEP_FRACTION * sum(mask))) if args.keep is None else args.keep
    perturbed_positions([True] * len(ids), args.protect, keep, args.text, offsets, special)
    encoder_choice = args.encoder or DEFAULT_TEXT_ENCODER
    encoder, record_encoder = TEXT_ENCODERS[encoder_choice](), _encoder_name(encoder_choice)
    smoother = text_digits.prompt_token_text_digits(
        load_text_ddpm().to(args.device), load_classifier(0.0).to(args.device), keep=keep, encoder=encoder,
        mask_token_id=args.mask_token, protect=args.protect, num_steps=args.steps, guidance=args.guidance,
        batch_size=args.batch_size)
    progress = _Progress(args.no_progress)
    try:
        cert = smoother.certify(args.text, edits=args.edits, n0=args.selection_samples, n=args.samples, alpha=args.alpha,
                                seed=args.seed, progress=progress)
        progress.close()
        images = smoother.samples(args.text, GRID_SAMPLES, seed=args.seed, request_id=1)
    finally:
        progress.close()
    digit = cert.prediction if not cert.abstained else cert.selected
    variants = text_digits.token_variants(args.text, cert, smoother.tokenizer, digit=digit)
    seconds = time.perf_counter() - start
    _draw_grid(png, [(f"ablated copies (keep {cert.keep} of {cert.perturbed} tokens)", images)],
               f"{args.text!r}: text-to-digit UNet, {record_encoder} on ablated prompts")
    covered = [v for v in variants if v.covered]
    record = {
        "model": "embedded:text_digits_ddpm", "encoder": record_encoder,
        "text": args.text, "noise": "ablate",
        "steps": args.steps, "guidance": args.guidance, "png": str(png), "seconds": seconds,
        "content_certificate": cert.to_record(), "variants": [v.to_record() for v in variants],
        "covered_variants": len(covered),
    }
    if not args.json:
        print(f"wrote {png}: {GRID_SAMPLES} generations of {args.text!r} from ablated copies (keep {cert.keep} of "
              f"{cert.perturbed} perturbed tokens, mask token {cert.mask_token_id}; {seconds:.1f} s)")
        print(f"tokens: {' '.join(f'{i}:{t}' for i, t in enumerate(cert.tokens or cert.prompt_ids))}")
        verdict = "certified" if cert.certified else "NOT certified"
        print(f"{verdict} against {cert.edits} edited token{'s' if cert.edits != 1 else ''} (p_lower = {cert.p_lower:.3f}, "
              f"needs > 1/2 + Delta_{cert.edits} = {0.5 + cert.delta:.3f}; n0={cert.n0}, n={cert.n}, alpha={cert.alpha})")
        print(cert.statement)
        print(f"rewordings as token edits: {len(covered)} of {len(variants)} covered (covered: same token count, at most "
              f"{max(cert.certified_edits, 0)} substitutions, none at a protected or special position; insertions and "
              "deletions change the token count and are never covered)")
        for v in covered[:10]:
            print(f"  covered    {v.substitutions} subst.  {v.kind:<17} {v.text!r}")
        for v in [v for v in variants if not v.covered][:5]:
            print(f"  uncovered  {v.token_edit_distance} edits   {v.kind:<17} {v.text!r}: {v.reason}")
    return record


def _write_grid(path: Path, base: torch.Tensor, noisy: torch.Tensor, mean: torch.Tensor, args: argparse.Namespace) -> None:
    rows = [("base", base), (f"smoothed (σ={args.sigma:g})", noisy), (f"mean of {args.samples}", mean[None])]
    _draw_grid(path, rows, f"digit {args.label}: DDPM with noise on its class embedding")


def _draw_grid(path: Path, rows: list[tuple[str, torch.Tensor]], title: str) -> None:
    """Rows of 8×8 images (each row: a title and a tensor [k, ...]) written as one PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(max(images.shape[0] for _, images in rows), 1)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, 1.35 * len(rows) + 0.3), squeeze=False)
    for r, (row_title, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < images.shape[0]:
                ax.imshow(images[c].reshape(8, 8).numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)
        axes[r][0].set_title(row_title, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomically(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


# ------------------------------------------------------------------------------------------------ files


def _check_out(path: str | None, overwrite: bool, suffix: str) -> Path | None:
    """Refuse to replace a file without --overwrite, before any work is done."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise InvalidParameterError(f"{path} must end in {suffix}")
    if out.exists() and not overwrite:
        raise ResultsFileError(f"{path} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise ResultsFileError(f"{path} is a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ResultsFileError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    return out
