"""Empirical attacks in embedding space, to test certificates from the other side.

`pgd_embedding_attack`: projected gradient ascent (ℓ2 ball of radius R on the perturbed prompt rows) on
the cross-entropy of the *smoothed* next-token probability of a target token, with the expectation over
the smoothing noise estimated by fresh draws at every iteration (EOT, as in Salman et al. 2019's
SmoothAdv): loss = −log( (1/m) Σ_j softmax(LM(emb(x) + δ + σ·ε_j, y_<t))[y_t] ). With σ = 0 it attacks
the base LM. `attack_certified_prefix` attacks every certified step of a `GenerationCertificate` at a
radius and checks, with many fresh samples, whether the smoothed decoder's prefix changed.

`pgd_conditioning_attack`: the same ℓ2 PGD with EOT on the conditioning tensor of a smoothed conditional
generator (`smoothgen.conditional.SmoothedConditionalDiffusion`), against its content (docs/theory.md §4f):
it maximizes the expected logit margin of another class over the certified one, with gradients through
the whole sampling chain (`differentiable_generation`); `content_counts` estimates the smoothed class
distribution at the attacked conditioning from fresh samples.

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


def _l2_ascent_step(delta: torch.Tensor, grad: torch.Tensor, eta: float, radius: float) -> torch.Tensor:
    """One ℓ2 PGD step: move eta along the normalised gradient, then project back onto the ball of `radius`
    (a zero or non-finite gradient leaves delta where it is)."""
    norm = float(grad.norm())
    if not math.isfinite(norm) or norm == 0.0:
        return delta
    delta = delta + eta * grad / norm
    size = float(delta.norm())
    return delta * (radius / size) if size > radius else delta


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
                delta = _l2_ascent_step(delta, grad * rows, eta, radius)
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


# --------------------------------------------------------------------------------------------------
# Attacks on the conditioning tensor of a smoothed conditional generator (content certificates, §4f)
# --------------------------------------------------------------------------------------------------


def differentiable_generation(generator: Any, embeds: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The sampling chain of a `smoothgen.conditional` generator, differentiable in the conditioning.

    `DiffusersGenerator.forward` and `smoothgen.models.ddpm.sample` run under `torch.no_grad`; this runs
    the same chain with autograd on: for a `DiffusersGenerator` its own private scheduler, `_predict`
    (UNet, classifier-free guidance) and `_step` (the scheduler's step with the copy's pre-drawn noise),
    then (x + 1)/2 or its `decode`, clamped to [0, 1]; for a `DiffusionGenerator` the undecorated
    `sample`. Gradients flow through every UNet call and scheduler step (and are zero where the
    scheduler clips x̂_0 or the output is clamped).

    Args:
        generator: A `DiffusersGenerator` or `DiffusionGenerator`.
        embeds: Conditioning tensors [b, *cond_shape] (may require grad).
        noise: Standard normal sampler noise [b, *generator._noise_shape] (the attacker's own draws:
            slot 0 the initial latent, slot k + 1 the k-th step's noise for a `DiffusersGenerator`).

    Returns:
        Images [b, *output_shape] in [0, 1], attached to the autograd graph of `embeds`.
    """
    from smoothgen.conditional import DiffusersGenerator, DiffusionGenerator
    from smoothgen.models.ddpm import sample

    if tuple(noise.shape) != (embeds.shape[0], *generator._noise_shape):
        raise InvalidParameterError(f"noise must have shape {(embeds.shape[0], *generator._noise_shape)}, got {tuple(noise.shape)}")
    if isinstance(generator, DiffusersGenerator):
        parameter = next(generator.unet.parameters(), None)
        device = parameter.device if parameter is not None else embeds.device
        dtype = parameter.dtype if parameter is not None and torch.is_floating_point(parameter) else torch.float32
        cond = embeds.to(device, dtype)
        noise = noise.to(device)
        scheduler = generator.scheduler
        scheduler.set_timesteps(generator.num_steps)
        x = noise[:, 0] * scheduler.init_noise_sigma
        for k, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(x, t).to(dtype)
            out = generator._predict(model_input, t, cond).to(x.dtype)
            x = generator._step(out, t, x, noise[:, k + 1])
        images = (x + 1.0) / 2.0 if generator.decode is None else generator.decode(x)
        return images.float().clamp(0.0, 1.0)
    if isinstance(generator, DiffusionGenerator):
        ddpm = generator.ddpm
        num_steps = None if generator.num_steps == int(ddpm.num_timesteps) else generator.num_steps
        undecorated = getattr(sample, "__wrapped__", sample)
        return undecorated(ddpm, class_embed=embeds, guidance=generator.guidance, num_steps=num_steps, noise=noise.to(ddpm.betas.device))
    raise InvalidParameterError(f"no differentiable sampling chain for {type(generator).__name__}")


def _classifier_logits(classifier: Any, images: torch.Tensor) -> torch.Tensor:
    parameter = next(classifier.parameters(), None) if isinstance(classifier, torch.nn.Module) else None
    if parameter is not None and torch.is_floating_point(parameter):
        images = images.to(parameter.device, parameter.dtype)
    return classifier(images)


@dataclass(frozen=True)
class ConditioningAttack:
    """Result of `pgd_conditioning_attack`.

    Attributes:
        delta: the perturbation of the conditioning tensor [*cond_shape] (float32, CPU).
        norm: its ℓ2 (Frobenius) norm (≤ radius).
        radius: the ℓ2 budget.
        protected: the class whose share the attack pushes down (the certified class).
        target: the class pushed up (None: whichever other class has the largest logit, per sample).
        margins: the EOT estimate of the expected margin (target or best other logit minus the
            protected class's logit) before each PGD step, then at the returned delta: iterations + 1 values.
    """

    delta: torch.Tensor
    norm: float
    radius: float
    protected: int
    target: int | None
    margins: tuple[float, ...]

    @property
    def margin(self) -> float:
        """The EOT margin estimate at the returned delta."""
        return self.margins[-1]


def pgd_conditioning_attack(
    smoothed: Any,
    classifier: Any,
    conditioning: torch.Tensor,
    protected: int,
    radius: float,
    *,
    target: int | None = None,
    iterations: int = 10,
    step_size: float | None = None,
    eot_samples: int = 8,
    seed: int = 0,
) -> ConditioningAttack:
    """ℓ2 PGD with EOT on the conditioning tensor against the content of a smoothed conditional generator.

    Maximizes, over ‖δ‖₂ ≤ radius (Frobenius norm; projected after every step), the expected logit margin
    of the content classifier c on what the smoothed generator draws at e + δ:

        M(δ) = E_{ε, ω} [ z_j(G(e + δ + ε, ω)) − z_A(G(e + δ + ε, ω)) ],   z = c(·) logits,
        ε ~ N(0, σ²I) (σ = smoothed.sigma), ω the sampler's randomness,

    with j = `target`, or the largest other logit of each sample (untargeted), and A = `protected` (the
    certified class). The expectation is estimated by `eot_samples` fresh draws of (ε, ω) at every step
    (EOT, as `pgd_embedding_attack`), and its gradient taken through the whole sampling chain
    (`differentiable_generation`: every UNet call and scheduler step) and the classifier. Steps have ℓ2
    length `step_size` along the normalised gradient (Madry et al.'s default 2.5·radius/iterations).

    The attack's draws come from its own torch.Generator (`seed`), independent of any certificate's or
    evaluation's streams. It only gives an upper bound on robustness: a failed attack proves nothing.

    Args:
        smoothed: A `smoothgen.conditional.SmoothedConditionalDiffusion` (its generator and σ).
        classifier: Content classifier, [b, *output_shape] -> logits [b, K].
        conditioning: The clean conditioning tensor e [*cond_shape] (e.g. a prompt's sentence embedding).
        protected: The class A whose share the attack lowers.
        radius: ℓ2 budget ≥ 0 (0 returns δ = 0 and the margin at e).
        target: A class to push up instead of the best other one.
        iterations: PGD steps.
        step_size: ℓ2 length of each step.
        eot_samples: Fresh (ε, ω) draws per step.
        seed: Seed of the attack's own draws.

    Returns:
        A `ConditioningAttack`.

    Shapes:
        conditioning: [*cond_shape] -> delta [*cond_shape].
    """
    radius = check_positive(radius, "radius", allow_zero=True)
    iterations = check_count(iterations, "iterations")
    eot_samples = check_count(eot_samples, "eot_samples")
    protected = check_count(protected, "protected", minimum=0)
    if target is not None:
        target = check_count(target, "target", minimum=0)
        if target == protected:
            raise InvalidParameterError("target must differ from the protected class")
    generator, sigma = smoothed.generator, float(smoothed.sigma)
    cond_shape = tuple(generator.cond_shape)
    if not isinstance(conditioning, torch.Tensor) or tuple(conditioning.shape) != cond_shape:
        raise InvalidParameterError(f"conditioning must be a tensor of shape {cond_shape}")
    clean = conditioning.detach().to("cpu", torch.float32)
    eta = 2.5 * radius / iterations if step_size is None else check_positive(step_size, "step_size")
    gen = torch.Generator()
    gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    delta = torch.zeros_like(clean)
    margins: list[float] = []

    def margin_at(d: torch.Tensor) -> torch.Tensor:
        eps = torch.randn((eot_samples, *cond_shape), generator=gen)
        noise = torch.randn((eot_samples, *generator._noise_shape), generator=gen)
        images = differentiable_generation(generator, clean[None] + d[None] + sigma * eps, noise)
        logits = _classifier_logits(classifier, images).double()
        if not 0 <= protected < logits.shape[1] or (target is not None and not 0 <= target < logits.shape[1]):
            raise InvalidParameterError(f"classes must lie in [0, {logits.shape[1]})")
        if target is None:
            others = logits.clone()
            others[:, protected] = -math.inf
            best = others.max(dim=1).values
        else:
            best = logits[:, target]
        return (best - logits[:, protected]).mean()

    with torch.enable_grad():
        for _ in range(iterations if radius > 0 else 0):
            d = delta.clone().requires_grad_(True)
            margin = margin_at(d)
            (grad,) = torch.autograd.grad(margin, d)
            margins.append(float(margin.detach()))
            delta = _l2_ascent_step(delta, grad, eta, radius)
    with torch.no_grad():
        margins.append(float(margin_at(delta)))
    delta = delta.detach()
    return ConditioningAttack(
        delta=delta, norm=float(delta.norm()), radius=radius, protected=protected, target=target, margins=tuple(margins)
    )


def content_counts(
    smoothed: Any, classifier: Any, conditioning: torch.Tensor, n: int, seed: int, *, num_classes: int | None = None
) -> torch.Tensor:
    """Class counts of the content of n fresh smoothed samples at `conditioning` (the smoothed class's
    distribution: `smoothed.samples` with the engine's ESTIMATION stream of `seed`, then argmax of the
    classifier). Shapes: conditioning [*cond_shape] -> counts [K] (int64)."""
    with torch.no_grad():
        images = smoothed.samples(prompt_embeds=conditioning, n=n, seed=seed)
        logits = _classifier_logits(classifier, images)
    k = logits.shape[1] if num_classes is None else int(num_classes)
    return torch.bincount(logits.argmax(dim=1).cpu(), minlength=k)


__all__ = [
    "ConditioningAttack",
    "EmbeddingAttack",
    "PrefixAttackReport",
    "attack_certified_prefix",
    "content_counts",
    "differentiable_generation",
    "pgd_conditioning_attack",
    "pgd_embedding_attack",
]
