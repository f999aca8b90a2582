"""Train the embedded models (digits models, code LM) and record their metrics in `weights/models.json`.

Usage::

    python -m smoothgen.models.train all                      # everything shipped in weights/
    python -m smoothgen.models.train classifier --sigma 0.5   # one classifier
    python -m smoothgen.models.train classifier --sigma 0     # the clean classifier (no noise augmentation)
    python -m smoothgen.models.train autoencoder --epochs 50 --out /tmp/weights
    python -m smoothgen.models.train ddpm                     # the class-conditional digits DDPM
    python -m smoothgen.models.train lm                       # the byte-level code LM (Python stdlib corpus)
    python -m smoothgen.models.train lm-ablate --keep-fraction 0.25   # code LM fine-tuned for token ablation
    python -m smoothgen.models.train lm-gauss --sigma 0.5     # code LM fine-tuned for Gaussian embedding noise
    python -m smoothgen.models.train lm-delete --delete-prob 0.9   # code LM fine-tuned for token deletion
    python -m smoothgen.models.train lm-delete --keep-last-line   # ... deleting only before the last line
    python -m smoothgen.models.train encoder-ablate           # LoRA adapter: all-MiniLM-L6-v2 for token ablation

Training is deterministic: the seed fixes the initial weights, the shuffling and every noise draw, and
deterministic algorithms are enforced, so the same command on the same software stack reproduces the
weights bit for bit (with the same ``--threads``; for the code LM, whose corpus is the running interpreter's
standard library, also the same Python release). The code LM takes about 10 minutes on 2 idle CPU cores
(1 200 steps of 32 × 256 bytes, 28 CPU-minutes). The smoothing-trained LMs (``lm-ablate``, ``lm-gauss``) are
fine-tuned from the code LM (500 steps each, a few minutes, plus about a minute and a half of evaluation);
they start from the weights in the package (or from the code LM trained by the same command, for ``all``).
The training functions are importable (`train_classifier`, `train_autoencoder`, `train_ddpm`, `train_lm`,
`finetune_lm`, `train_text_ddpm`) and restore the caller's global RNG and determinism settings when they
return. They live in one module per model, on one shared base: `train_common` (seeding, weights files,
models.json), `train_digits`, `train_ddpm`, `train_code_lm` (the training loop of every code LM, the BPE
one of `train_code_bpe` too) and `train_text_ddpm`; this module is the command line over them.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from smoothgen.models import METADATA_FILENAME, WEIGHTS_DIR
from smoothgen.models.lm import CodeLM
from smoothgen.models.train_common import DEFAULT_SEED, save_model, save_tensors, update_metadata
from smoothgen.models.train_digits import (  # noqa: F401 - the training functions, importable from here
    AUTOENCODER_FILENAME,
    AUTOENCODER_NAME,
    AUTOENCODER_NOISE_SIGMAS,
    DEFAULT_AUTOENCODER_EPOCHS,
    DEFAULT_CLASSIFIER_EPOCHS,
    DEFAULT_SIGMAS,
    classifier_filename,
    classifier_name,
    train_autoencoder,
    train_classifier,
)
from smoothgen.models.train_ddpm import (  # noqa: F401 - the training functions, importable from here
    DDPM_FILENAME,
    DDPM_NAME,
    DEFAULT_DDPM_EPOCHS,
    train_ddpm,
)
from smoothgen.models.train_code_lm import (  # noqa: F401 - the training functions, importable from here
    ABLATION_MASK_TOKEN,
    DEFAULT_FINETUNE_STEPS,
    DEFAULT_LM_DELETE_PROBS,
    DEFAULT_LM_GAUSS_SIGMAS,
    DEFAULT_LM_KEEP_FRACTIONS,
    DEFAULT_LM_STEPS,
    FINETUNE_PROMPT_LENGTHS,
    LM_FILENAME,
    LM_NAME,
    finetune_lm,
    finetuned_lm_name,
    train_lm,
)
from smoothgen.models.train_text_ddpm import (  # noqa: F401 - the training functions, importable from here
    DEFAULT_TEXT_DDPM_EPOCHS,
    TEXT_DDPM_COND_SIGMAS,
    TEXT_DDPM_FILENAME,
    TEXT_DDPM_NAME,
    train_text_ddpm,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoothgen.models.train",
        description=(
            "Train the embedded models deterministically and save them as safetensors, with "
            "their test metrics merged into models.json. Classifiers (DigitsCNN) are trained with "
            "Gaussian noise augmentation x + sigma*N(0, I), the noise randomized smoothing certifies; "
            "the autoencoder (DigitsAutoencoder) learns to reconstruct clean images from inputs with "
            f"noise sigma drawn per batch from {list(AUTOENCODER_NOISE_SIGMAS)}. --sigma 0 trains a clean "
            "classifier (no noise), the one behind the DDPM purifier. The DDPM (DigitsDDPM) is a "
            "class-conditional noise-prediction network with classifier-free-guidance dropout. The code LM "
            "(CodeLM) is a byte-level causal transformer trained on the running interpreter's standard "
            "library sources, with about 5% of the files held out for evaluation. lm-ablate and lm-gauss fine-tune the "
            "code LM on the smoothing distribution of smoothgen.generative.SmoothedLM: prompts (the first P bytes "
            f"of each window, P uniform in {list(FINETUNE_PROMPT_LENGTHS)}) with all but round(f*P) positions "
            f"replaced by byte {ABLATION_MASK_TOKEN} (token ablation, keep fraction f), or with N(0, sigma^2 I) "
            "added to their embeddings (embedding table, tied to the output head, frozen); lm-delete with each "
            "prompt byte deleted with probability p (token deletion, the rest closes up). The continuation "
            "stays clean and carries the loss. Their records add clean and smoothed held-out metrics, and the "
            "code LM's smoothed metrics at the same noise."
        ),
    )
    parser.add_argument(
        "what",
        choices=["classifier", "autoencoder", "ddpm", "lm", "lm-ablate", "lm-gauss", "lm-delete", "all", "text-ddpm",
                 "encoder-ablate"],
        help=(
            "which models to train: the classifiers, the autoencoder, the DDPM, the code LM, the code LM "
            "fine-tuned for token ablation, Gaussian embedding noise or token deletion, or all of them (all "
            f"fine-tunes the code LM it has just trained, at the keep fractions {list(DEFAULT_LM_KEEP_FRACTIONS)}, "
            f"sigmas {list(DEFAULT_LM_GAUSS_SIGMAS)} and deletion probabilities {list(DEFAULT_LM_DELETE_PROBS)})"
        ),
    )
    parser.add_argument(
        "--sigma",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help=(
            f"training noise level(s) of the classifiers, 0 = clean (default: {' '.join(map(str, DEFAULT_SIGMAS))}), "
            f"or, for lm-gauss, of the embedding noise, > 0 (default: {' '.join(map(str, DEFAULT_LM_GAUSS_SIGMAS))})"
        ),
    )
    parser.add_argument(
        "--keep-fraction",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help=(
            "lm-ablate only: fraction(s) of the prompt positions each ablated copy keeps, in (0, 1] "
            f"(default: {' '.join(map(str, DEFAULT_LM_KEEP_FRACTIONS))})"
        ),
    )
    parser.add_argument(
        "--delete-prob",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help=(
            "lm-delete only: probability with which each prompt byte is deleted, in (0, 1) "
            f"(default: {' '.join(map(str, DEFAULT_LM_DELETE_PROBS))})"
        ),
    )
    parser.add_argument(
        "--keep-last-line",
        action="store_true",
        help=(
            "lm-delete only: delete bytes of each training prompt only up to its last line break, keeping the line "
            "being completed whole (the distribution of smoothgen generate --noise delete with its default "
            "--perturb context); by default every prompt byte may be deleted, as the shipped code_lm_delete0.9 "
            "was trained"
        ),
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="E",
        help=(
            f"passes over the training split (default: {DEFAULT_CLASSIFIER_EPOCHS} for classifiers, "
            f"{DEFAULT_AUTOENCODER_EPOCHS} for the autoencoder, {DEFAULT_DDPM_EPOCHS} for the DDPM)"
        ),
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="S",
        help=(
            f"optimizer steps of every LM the command trains (default: {DEFAULT_LM_STEPS} for the code LM, "
            f"{DEFAULT_FINETUNE_STEPS} for lm-ablate and lm-gauss)"
        ),
    )
    parser.add_argument(
        "--cond-sigma",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help=(
            "text-ddpm only (the text-to-digit diffusers UNet conditioned on all-MiniLM-L6-v2 prompt embeddings, "
            "not part of all): Gaussian noise levels on the prompt embedding during training, one drawn per image "
            f"(default: {' '.join(map(str, TEXT_DDPM_COND_SIGMAS))})"
        ),
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N", help="training seed (default: 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=WEIGHTS_DIR,
        metavar="DIR",
        help="output folder for the weights and models.json (default: the package's weights folder)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, metavar="T", help="torch CPU threads (default: 2)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m smoothgen.models.train --help``.

    Args:
        argv: Arguments without the program name (default: sys.argv[1:]).

    Returns:
        The exit status.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    lm_kinds = ("lm", "lm-ablate", "lm-gauss", "lm-delete")
    if args.sigma is not None and args.what in ("autoencoder", "ddpm", "lm", "lm-ablate", "lm-delete"):
        parser.error("--sigma applies to classifiers and lm-gauss only")
    if args.keep_fraction is not None and args.what != "lm-ablate":
        parser.error("--keep-fraction applies to lm-ablate only")
    if args.delete_prob is not None and args.what != "lm-delete":
        parser.error("--delete-prob applies to lm-delete only")
    if args.keep_last_line and args.what != "lm-delete":
        parser.error("--keep-last-line applies to lm-delete only")
    delete_probs = DEFAULT_LM_DELETE_PROBS if args.delete_prob is None else tuple(args.delete_prob)
    if not all(0 < p < 1 for p in delete_probs):
        parser.error(f"--delete-prob must lie in (0, 1), got {list(delete_probs)}")
    if args.epochs is not None and args.what in lm_kinds:
        parser.error("--epochs does not apply to the code LMs; use --steps")
    if args.steps is not None and args.what not in (*lm_kinds, "all", "encoder-ablate"):
        parser.error("--steps applies to the code LMs and encoder-ablate only")
    if args.what == "text-ddpm" and args.sigma is not None:
        parser.error("text-ddpm takes --cond-sigma, not --sigma")
    if args.cond_sigma is not None and args.what != "text-ddpm":
        parser.error("--cond-sigma applies to text-ddpm only")
    if args.cond_sigma is not None and not all(math.isfinite(s) and s >= 0 for s in args.cond_sigma):
        parser.error(f"--cond-sigma must be finite and >= 0, got {args.cond_sigma}")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    sigmas = DEFAULT_SIGMAS if args.sigma is None else tuple(args.sigma)
    for sigma in sigmas:
        if not (math.isfinite(sigma) and sigma >= 0):
            parser.error(f"--sigma must be finite and >= 0, got {sigma}")
    gauss_sigmas = DEFAULT_LM_GAUSS_SIGMAS if args.sigma is None or args.what != "lm-gauss" else tuple(args.sigma)
    if not all(math.isfinite(s) and s > 0 for s in gauss_sigmas):
        parser.error(f"--sigma must be finite and > 0 for lm-gauss, got {list(gauss_sigmas)}")
    keep_fractions = DEFAULT_LM_KEEP_FRACTIONS if args.keep_fraction is None else tuple(args.keep_fraction)
    if not all(0 < f <= 1 for f in keep_fractions):
        parser.error(f"--keep-fraction must lie in (0, 1], got {list(keep_fractions)}")
    torch.set_num_threads(args.threads)
    out_dir: Path = args.out

    records: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    if args.what in ("classifier", "all"):
        for sigma in sigmas:
            epochs = DEFAULT_CLASSIFIER_EPOCHS if args.epochs is None else args.epochs
            model, record = train_classifier(sigma, epochs, args.seed, progress=True)
            record = save_model(model, out_dir, classifier_filename(sigma), record)
            records[classifier_name(sigma)] = record
            print(
                f"{record['file']}: clean test accuracy {record['clean_test_accuracy']:.4f}, "
                f"noisy (sigma={sigma}) {record['noisy_test_accuracy']:.4f}",
                file=sys.stderr,
            )
    if args.what in ("autoencoder", "all"):
        epochs = DEFAULT_AUTOENCODER_EPOCHS if args.epochs is None else args.epochs
        model, record = train_autoencoder(epochs, args.seed, progress=True)
        record = save_model(model, out_dir, AUTOENCODER_FILENAME, record)
        records[AUTOENCODER_NAME] = record
        print(
            f"{record['file']}: clean test MSE {record['clean_test_mse']:.5f}, "
            f"noisy (sigma={record['noisy_test_sigma']}) {record['noisy_test_mse']:.5f}",
            file=sys.stderr,
        )
    if args.what in ("ddpm", "all"):
        epochs = DEFAULT_DDPM_EPOCHS if args.epochs is None else args.epochs
        model, record = train_ddpm(epochs, args.seed, progress=True)
        record = save_model(model, out_dir, DDPM_FILENAME, record)
        records[DDPM_NAME] = record
        mse = ", ".join(f"sigma={s}: {v:.5f}" for s, v in record["denoise_test_mse_by_sigma"].items())
        print(f"{record['file']}: one-shot denoising test MSE {mse}", file=sys.stderr)
    base: str | CodeLM = LM_NAME
    if args.what in ("lm", "all"):
        steps = DEFAULT_LM_STEPS if args.steps is None else args.steps
        model, record = train_lm(steps, args.seed, progress=True)
        record = save_model(model, out_dir, LM_FILENAME, record)
        records[LM_NAME] = record
        base = model  # `all` fine-tunes the code LM it has just trained
        heldout, unigram = record["heldout"], record["heldout_unigram_baseline"]
        print(
            f"{record['file']}: held-out next-byte accuracy {heldout['accuracy']:.4f}, "
            f"{heldout['bits_per_byte']:.3f} bits/byte (unigram baseline {unigram['accuracy']:.4f}, "
            f"{unigram['bits_per_byte']:.3f} bits/byte), trained in {record['train_seconds']:.0f} s",
            file=sys.stderr,
        )
    finetunes = [("ablate", f) for f in keep_fractions if args.what in ("lm-ablate", "all")]
    finetunes += [("gauss", s) for s in gauss_sigmas if args.what in ("lm-gauss", "all")]
    finetunes += [("delete", p) for p in delete_probs if args.what in ("lm-delete", "all")]
    for noise, level in finetunes:
        steps = DEFAULT_FINETUNE_STEPS if args.steps is None else args.steps
        model, record = finetune_lm(noise, level, steps, args.seed, base=base, progress=True,
                                    keep_last_line=args.keep_last_line)
        if isinstance(base, CodeLM):
            record.update(base_model=LM_NAME, base_sha256=records[LM_NAME]["sha256"])
        name = finetuned_lm_name(noise, level)
        record = save_model(model, out_dir, f"{name}.safetensors", record)
        records[name] = record
        clean, smoothed = record["heldout_slice"], record["smoothed_heldout_slice"]
        print(
            f"{record['file']}: held-out slice accuracy {clean['accuracy']:.4f} ({clean['bits_per_byte']:.3f} "
            f"bits/byte) clean; smoothed ({noise} {level}) {smoothed['model']['accuracy']:.4f} "
            f"({smoothed['model']['bits_per_byte']:.3f} bits/byte), code LM smoothed "
            f"{smoothed['base']['accuracy']:.4f} ({smoothed['base']['bits_per_byte']:.3f} bits/byte); trained in "
            f"{record['train_seconds']:.0f} s",
            file=sys.stderr,
        )
    if args.what == "text-ddpm":
        epochs = DEFAULT_TEXT_DDPM_EPOCHS if args.epochs is None else args.epochs
        cond_sigmas = TEXT_DDPM_COND_SIGMAS if args.cond_sigma is None else tuple(args.cond_sigma)
        model, record = train_text_ddpm(epochs, args.seed, cond_sigmas=cond_sigmas, progress=True)
        record = save_model(model, out_dir, TEXT_DDPM_FILENAME, record)
        records[TEXT_DDPM_NAME] = record
        accuracy = ", ".join(
            f"sigma={s}: {v['heldout_accuracy']:.3f}" for s, v in record["generation"]["by_sigma"].items()
        )
        print(f"{record['file']}: held-out-template generation accuracy {accuracy}; trained in "
              f"{record['train_seconds']:.0f} s", file=sys.stderr)
    if args.what == "encoder-ablate":
        from smoothgen.models.ablation_encoder import ABLATION_ENCODER_FILENAME, ABLATION_ENCODER_NAME, train_ablation_encoder

        kwargs = {} if args.steps is None else {"steps": args.steps}
        tensors, record = train_ablation_encoder(seed=args.seed, progress=True, **kwargs)
        record = save_tensors(tensors, out_dir, ABLATION_ENCODER_FILENAME, record)
        records[ABLATION_ENCODER_NAME] = record
        held = record["heldout"]
        print(f"{record['file']}: held-out cosine distance of ablated copies (keep 0.3) to the whole sentence "
              f"{held['0.3']['cosine_distance_to_whole']:.3f} (original model "
              f"{record['heldout_original']['0.3']['cosine_distance_to_whole']:.3f}); trained in "
              f"{record['train_seconds']:.0f} s", file=sys.stderr)
    update_metadata(out_dir, records)
    print(f"wrote {out_dir / METADATA_FILENAME} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
