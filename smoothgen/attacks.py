"""Empirical attacks in embedding space, to test certificates from the other side.

`pgd_embedding_attack`: projected gradient ascent (ℓ2 ball of radius R on the perturbed prompt rows) on
the cross-entropy of the *smoothed* next-token probability of a target token, with the expectation over
the smoothing noise estimated by fresh draws at every iteration (EOT, as in Salman et al. 2019's
SmoothAdv): loss = −log( (1/m) Σ_j softmax(LM(emb(x) + δ + σ·ε_j, y_<t))[y_t] ). With σ = 0 it attacks
the base LM. `attack_certified_prefix` attacks every certified step of a `GenerationCertificate` at a
radius and checks, with many fresh samples, whether the smoothed decoder's prefix changed.

A successful attack within a certified radius would refute the certificate (or its confidence: it holds
with probability ≥ 1 − α). Attacks only give upper bounds on robustness; a failed attack proves nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from smoothgen.errors import InvalidParameterError
from smoothgen.generative import GenerationCertificate, SmoothedLM, forward_lm
from smoothgen.validate import check_count, check_positive


@dataclass(frozen=True)
class EmbeddingAttack:
    """Result of `pgd_embedding_attack`.

    Attributes:
        delta: the perturbation of the prompt's embedding rows [L, D] (zero on unperturbed rows).
        norm: its Frobenius norm (≤ radius).
        radius: the ℓ2 budget.
        step: the attacked decoding step t (teacher-forced on tokens[:t]).
        target: the token whose smoothed probability was pushed down.
        loss: the last EOT estimate of −log p̄_t(target).
    """

    delta: torch.Tensor
    norm: float
    radius: float
    step: int
    target: int
    loss: float


def pgd_embedding_attack(
    model: Any,
    prompt_ids: Sequence[int] | torch.Tensor,
    tokens: Sequence[int],
    step: int,
    radius: float,
    sigma: float,
    *,
    mask: Sequence[bool] | torch.Tensor | None = None,
    iterations: int = 40,
    step_size: float | None = None,
    eot_samples: int = 32,
    seed: int = 0,
) -> EmbeddingAttack:
    """ℓ2 PGD with EOT on the smoothed probability of tokens[step] given tokens[:step].

    Args:
        model: the causal LM (HF-style interface, see `smoothgen.generative`).
        prompt_ids: the clean prompt [L].
        tokens: the generated tokens; tokens[:step] are fed (clean embeddings), tokens[step] is the target.
        step: which decoding step to attack.
        radius: ℓ2 (Frobenius) budget on the perturbed rows.
        sigma: the smoothing σ (0: attack the base LM, one deterministic copy per iteration).
        mask: perturbed positions (None: all); the attack and the noise touch only those rows.
        iterations: PGD steps.
        step_size: ℓ2 length of each step (default 2.5·radius/iterations, Madry et al.'s rule).
        eot_samples: fresh noise draws per iteration.
        seed: seed of the attack's own noise (independent of any certificate's streams).

    Shapes:
        -> delta [L, D]
    """
    radius = check_positive(radius, "radius", allow_zero=True)
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    iterations = check_count(iterations, "iterations")
    eot_samples = 1 if sigma == 0 else check_count(eot_samples, "eot_samples")
    step = check_count(step, "step", minimum=0)
    if step >= len(tokens):
        raise InvalidParameterError(f"step {step} outside the {len(tokens)} tokens")
    table = model.get_input_embeddings().weight.detach()
    device = table.device
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    length = ids.numel()
    m = torch.ones(length, dtype=torch.bool, device=device) if mask is None else torch.as_tensor(mask, device=device).bool()
    rows = m[:, None].to(table.dtype)  # [L, 1]
    clean = table[ids]  # [L, D]
    fed = table[torch.as_tensor(list(tokens[:step]), dtype=torch.long, device=device)]  # [t, D]
    target = int(tokens[step])
    eta = 2.5 * radius / iterations if step_size is None else check_positive(step_size, "step_size")
    delta = torch.zeros_like(clean)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    loss_value = math.nan

    def loss_at(d: torch.Tensor) -> torch.Tensor:
        eps = torch.randn((eot_samples, length, clean.shape[1]), generator=gen, device=device, dtype=table.dtype)
        prompt = clean[None] + (d * rows)[None] + sigma * eps * rows[None]
        seq = torch.cat([prompt, fed[None].expand(eot_samples, -1, -1)], dim=1)
        logits, _ = forward_lm(model, seq)
        # float64: a saturated softmax would otherwise underflow and leave no gradient.
        logp = torch.log_softmax(logits[:, -1].double(), dim=-1)[:, target]
        return -(torch.logsumexp(logp, dim=0) - math.log(eot_samples))

    if radius > 0:
        with torch.enable_grad():
            for _ in range(iterations):
                d = delta.clone().requires_grad_(True)
                loss = loss_at(d)
                (grad,) = torch.autograd.grad(loss, d)
                loss_value = float(loss.detach())
                grad = grad * rows
                norm = float(grad.norm())
                if not math.isfinite(norm) or norm == 0.0:
                    continue
                delta = delta + eta * grad / norm
                size = float(delta.norm())
                if size > radius:
                    delta = delta * (radius / size)
    delta = (delta * rows).detach()
    return EmbeddingAttack(delta=delta, norm=float(delta.norm()), radius=radius, step=step, target=target, loss=loss_value)


@dataclass(frozen=True)
class PrefixAttackReport:
    """Result of `attack_certified_prefix`.

    Attributes:
        radius: the attack budget.
        prefix: the certified prefix length at that radius (the steps attacked).
        broken: True when some attack changed the smoothed decoder's first `prefix` tokens.
        decoded: per attacked step, the first `prefix` tokens the smoothed decoder produced under it.
        attacks: the attacks, one per step.
    """

    radius: float
    prefix: int
    broken: bool
    decoded: tuple[tuple[int, ...], ...]
    attacks: tuple[EmbeddingAttack, ...]


def attack_certified_prefix(
    smoothed: SmoothedLM,
    certificate: GenerationCertificate,
    radius: float,
    *,
    n_eval: int = 1000,
    eval_seed: int = 12345,
    iterations: int = 40,
    eot_samples: int = 32,
    seed: int = 0,
) -> PrefixAttackReport:
    """Attack each step of the prefix certified at `radius` and re-decode with n_eval fresh samples.

    The smoothed decoder under attack is `smoothed.decode` (greedy from p̄, estimated with n_eval copies
    of the Purpose.PREDICT stream of `eval_seed`).
    """
    radius = check_positive(radius, "radius", allow_zero=True)
    k = certificate.prefix_at(radius)
    decoded, attacks, broken = [], [], False
    for t in range(k):
        attack = pgd_embedding_attack(
            smoothed.model, certificate.prompt, certificate.tokens, t, radius, smoothed.sigma,
            mask=certificate.mask, iterations=iterations, eot_samples=eot_samples, seed=seed + t,
        )
        out = smoothed.decode(certificate.prompt, k, n_eval, eval_seed, mask=certificate.mask, delta=attack.delta)
        decoded.append(out)
        attacks.append(attack)
        broken = broken or out != certificate.tokens[:k]
    return PrefixAttackReport(radius=radius, prefix=k, broken=broken, decoded=tuple(decoded), attacks=tuple(attacks))


__all__ = ["EmbeddingAttack", "PrefixAttackReport", "attack_certified_prefix", "pgd_embedding_attack"]
