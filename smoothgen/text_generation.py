"""Certified text generation, the application layer under every front door: `smoothgen generate` (the CLI),
`/v1/generate` (the HTTP service) and `smoothgen verify --recompute` build the same record with
`certified_generation` from a model loaded by `load_lm_spec`, and never import one another for it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smoothgen._lazy import lazy_module
from smoothgen.errors import InvalidParameterError, ModelLoadError, first_line
from smoothgen.job_specs import DEFAULT_MAX_NEW_TOKENS, DEFAULT_PROMPT  # noqa: F401  (named here too)

torch = lazy_module("torch")

#: σ of the embedded byte-level LM, in its embedding units: the largest σ measured at which p̄ keeps
#: ≥ 95 % of the base model's next-byte accuracy (97 % at 0.01, 90 % at 0.02; benchmarks/RESULTS.md,
#: SmoothGen for language models). Its certified radii cover no byte substitution (rows lie ≈ 0.83 apart).
DEFAULT_TEXT_SIGMA = 0.01
#: The keep fraction of --noise ablate when --keep is not given (the embedded ablation LMs are trained at
#: 0.1 and 0.25 of the prompt; 0.1 certifies more edits, benchmarks/RESULTS.md).
DEFAULT_KEEP_FRACTION = 0.1
#: --delete-prob of --noise delete: each perturbed token deleted with this probability (Δ_1 = 1 − p = 0.1,
#: about the ablation default's k/P; the embedded code_lm_delete0.9 is trained at it).
DEFAULT_DELETE_PROB = 0.9

#: The embedded LM that --noise ablate uses by default: fine-tuned under the ablation it is smoothed with.
ABLATION_LM = "code_lm_ablate0.1"
#: The embedded LM that --noise delete uses by default: fine-tuned under token deletion at p = 0.9.
DELETION_LM = "code_lm_delete0.9"


def load_lm_spec(spec: str | None, device: str, noise: str = "gaussian") -> tuple[Any, Any, str]:
    """(model, tokenizer or None, name) for --model (default: the embedded LM trained for the noise);
    embedded:NAME is any embedded LM (`smoothgen.models.lm_names`), with its tokenizer when it has one."""
    if spec is None or spec.startswith("embedded:"):
        from smoothgen.models import load_lm, load_tokenizer

        name = {"ablate": ABLATION_LM, "delete": DELETION_LM}.get(noise, "code_lm") if spec is None else spec[9:]
        return load_lm(name).to(device), load_tokenizer(name), f"embedded:{name}"
    if spec.startswith("hf:"):
        folder = spec[3:]
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelLoadError("--model hf:FOLDER needs the transformers package (pip install 'smoothgen[hf]')") from exc
        if not Path(folder).is_dir():
            raise ModelLoadError(f"--model {spec}: {folder} is not a folder")
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).to(device)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, ... for unreadable folders
            raise ModelLoadError(f"cannot load --model {spec}: {first_line(exc)}") from exc
        return model, tokenizer, spec
    from smoothgen.loading import _from_factory

    return _from_factory(spec).to(device), None, spec


def decode_text(tokens: Any, tokenizer: Any) -> str:
    if tokenizer is not None:
        return tokenizer.decode(list(tokens))
    from smoothgen.models.lm import decode

    return decode(list(tokens))


def certified_generation(
    model: Any,
    tokenizer: Any,
    name: str,
    *,
    prompt: str,
    noise: str,
    max_new_tokens: int,
    n0: int,
    n: int,
    alpha: float,
    seed: int | None,
    request_id: int = 0,
    sigma: float | None = None,
    keep: int | None = None,
    mask_token: int | None = None,
    perturb: str | None = None,
    edits: int | None = None,
    radius: float | None = None,
    delete_prob: float | None = None,
    sequential: bool = False,
    check_every: int | None = None,
    first_check: str | None = None,
    selection: str | None = None,
    batch_size: int = 250,
    progress: Any = None,
    check: Any = None,
) -> tuple[dict[str, Any], Any, Any]:
    """One certified generation, as the record `smoothgen generate --json` prints (the HTTP service's
    /v1/generate returns the same record). Returns (record, GenerationCertificate, the SmoothedLM).

    noise "ablate" (keep k of the perturbed positions, certificate against `edits` substituted tokens),
    "delete" (each perturbed token deleted with probability `delete_prob`, certificate against `edits`
    inserted, deleted or substituted tokens) or "gaussian" (σ on the prompt's embeddings, prefix reported
    at `radius`); `perturb` picks the positions
    (`perturbed_positions`); `check(smoothed, ids)` runs before any decoding (e.g. a size limit).
    """
    from smoothgen.generative import SmoothedLM, nearest_neighbor_distances

    ablate = noise in ("ablate", "delete")  # certificates in edited tokens
    # With token ablation or deletion this first instance only parses the prompt (σ = 1 is never used).
    smoothed = SmoothedLM(model, 1.0 if ablate else sigma, batch_size=batch_size, tokenizer=tokenizer)
    ids = smoothed.prompt_ids(prompt)  # checks emptiness, vocabulary and (below) the context length
    mask, perturb = perturbed_positions(ids, perturb, noise, tokenizer)
    smoothed.mask = mask
    if noise == "ablate":
        ablation = token_ablation(smoothed, ids, tokenizer, keep, mask_token)
        perturbed = sum(mask)
        if edits and ablation.keep >= perturbed:  # Δ_r = 1: every copy sees every edit, nothing can be certified
            raise InvalidParameterError(
                f"keep = {ablation.keep} of {perturbed} perturbed position{'s' if perturbed != 1 else ''} (--perturb "
                f"{perturb}) keeps every one in every copy, so any edit is seen by all of them and nothing can be "
                f"certified against {edits} edit{'s' if edits != 1 else ''}: perturb more positions (--perturb context "
                "or all), lower --keep, use --noise delete, or --edits 0")
        smoothed = SmoothedLM(model, ablation, batch_size=batch_size, tokenizer=tokenizer, mask=mask)
    elif noise == "delete":
        from smoothgen.deletion import TokenDeletion

        deletion = TokenDeletion(DEFAULT_DELETE_PROB if delete_prob is None else delete_prob,
                                 empty_token_id=default_mask_token(smoothed, tokenizer, mask_token))
        smoothed = SmoothedLM(model, deletion, batch_size=batch_size, tokenizer=tokenizer, mask=mask)
    if check is not None:
        check(smoothed, ids)
    start = time.perf_counter()
    extra = {"sequential": True} if sequential else {}
    if sequential and check_every is not None:  # else SmoothedLM.generate's default
        extra["check_every"] = check_every
    if sequential and first_check is not None:  # else SmoothedLM.generate's default ("earliest")
        extra["first_check"] = first_check
    if selection is not None:  # else SmoothedLM.generate's default ("equal-length")
        extra["selection"] = selection
    cert = smoothed.generate(ids, max_new_tokens, n0=n0, n=n, alpha=alpha, seed=seed, request_id=request_id,
                             radius=float(edits) if ablate else radius, progress=progress, **extra)
    seconds = time.perf_counter() - start
    k = cert.certified_prefix
    record = {**cert.to_dict(), "prompt_ids": list(cert.prompt), "model": name, "prompt": prompt}
    if ablate:
        record.update(mask_token=getattr(smoothed.noise, "mask_token_id", getattr(smoothed.noise, "empty_token_id", None)),
                      perturbed_positions=int(sum(cert.mask)), perturb=perturb, edits=edits)
    record.update(text=decode_text(cert.tokens, tokenizer), certified_text=decode_text(cert.tokens[:k], tokenizer))
    if ablate:
        record["whole_generation_edits"] = int(min(cert.step_radius))
    else:
        nn_dist = nearest_neighbor_distances(smoothed.table, ids.cpu())[torch.tensor(cert.mask)]
        record.update(whole_generation_radius=cert.prefix_radius(len(cert.tokens)),
                      min_substitution_radius=float(nn_dist.min()), perturb=perturb)
    record["seconds"] = seconds
    return record, cert, smoothed


def perturbed_positions(ids: torch.Tensor, perturb: str | None, noise: str, tokenizer: Any) -> tuple[list[bool], str]:
    """The mask of --perturb for this prompt, and the --perturb it stands for (the default resolved).

    context: every position up to and including the last token that holds a line break, when some token
    follows it (the line being completed); a prompt of one line has no context. Default: context for a
    prompt of several lines under token ablation or deletion, else all.

    "context" reads the clean prompt's content, so the mask is computed here once, from x, and passed on
    as a fixed list of booleans: the certificate is about the model smoothed over these positions, at every
    prompt of x's length that differs from x only inside them (docs/theory.md §4g). Recomputing the mask
    from an edited prompt would give another smoothed model, which the certificate does not describe.
    """
    pieces = [decode_text([int(t)], tokenizer) for t in ids.tolist()]
    breaks = [i for i, piece in enumerate(pieces) if "\n" in piece and i < len(pieces) - 1]
    if perturb is None:
        perturb = "context" if noise in ("ablate", "delete") and breaks else "all"
    length = len(pieces)
    if perturb == "all":
        return [True] * length, perturb
    if perturb == "last":
        return [i == length - 1 for i in range(length)], perturb
    if perturb != "context":
        raise InvalidParameterError(f"perturb must be all, context or last, got {perturb!r}")
    if not breaks:
        raise InvalidParameterError("--perturb context needs a prompt of several lines (it perturbs every line before "
                                    "the last one); use --perturb all for a one-line prompt")
    return [i <= breaks[-1] for i in range(length)], perturb


def token_ablation(smoothed: Any, ids: torch.Tensor, tokenizer: Any, keep: int | None, mask_token: int | None) -> Any:
    """The TokenAblation of --keep (default: DEFAULT_KEEP_FRACTION of the perturbed positions, at least 1)
    and --mask-token (default: NUL for byte-level LMs, else the tokenizer's mask or unknown token)."""
    from smoothgen.generative import TokenAblation

    perturbed = int(smoothed.prompt_mask(ids).sum())
    keep = max(1, round(DEFAULT_KEEP_FRACTION * perturbed)) if keep is None else keep
    return TokenAblation(keep, default_mask_token(smoothed, tokenizer, mask_token))


def default_mask_token(smoothed: Any, tokenizer: Any, mask_token: int | None) -> int:
    """--mask-token, or its default: NUL for byte-level LMs, else the tokenizer's mask or unknown token."""
    if mask_token is not None:
        return mask_token
    from smoothgen.models.lm import CodeLM

    if tokenizer is None and isinstance(smoothed.base_model, CodeLM):
        return 0  # byte-level LMs: NUL, never in source text (the ablation-trained LM's mask byte)
    mask_token = getattr(tokenizer, "mask_token_id", None)
    mask_token = getattr(tokenizer, "unk_token_id", None) if mask_token is None else mask_token
    if mask_token is None:
        raise InvalidParameterError("this model's tokenizer has no mask or unknown token: pass --mask-token ID")
    return mask_token
