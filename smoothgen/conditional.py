"""Smoothing a conditional diffusion model in its conditioning-embedding space (docs/theory.md §4a, §4d, §4e).

A conditional diffusion model is conditioned on a tensor e: the class embedding e_k = class_embedding(k)
∈ R^D (D = 64) of the embedded class-conditional digits DDPM (`smoothgen.models.load_ddpm`), or the
`encoder_hidden_states` / prompt embeddings of any diffusers UNet (`DiffusersGenerator`,
`SmoothedConditionalDiffusion.from_diffusers`). `SmoothedConditionalDiffusion` perturbs that tensor
with Gaussian noise and lets every noisy copy run the sampler with its own, independent randomness:

    G(e) = sample(conditioning = e + ε, sampler randomness ω),   ε ~ N(0, σ²I), ω independent of ε.

The adversary of the certificates moves the conditioning tensor: e → e' with ‖e − e'‖₂ ≤ R (Frobenius
norm for a [L, D] prompt embedding). Changing the label k → j is the move e_k → e_j, so a radius R
covers exactly the labels j with ‖e_k − e_j‖ ≤ R (`class_distances`, `covered_labels`); for a text
model, the labels can be prompts (`label_conditionings`).

What is certified, for every ‖e − e'‖₂ ≤ R:
- one generated sample (`samples`): TV(P_e, P_e') ≤ 2Φ(R/(2σ)) − 1 (§4a, `stats.tv_bound`), and
  W1 under ℓ2 ≤ D_img·TV with D_img = sqrt(k) the ℓ2 diameter of [0, 1]^k images (8 for the 8×8
  digits). Sample-free; valid because σ is fixed and ω is independent of ε.
- the mean image (`certify_mean`, §4e): outputs are clipped to [0, 1]^k, so ‖f − ½·1‖₂ ≤ B = sqrt(k)/2
  and the EXPECTATION F(e) = E f satisfies ‖F(e) − F(e')‖₂ ≤ 2B·(2Φ(R/(2σ)) − 1). The reported image is
  the empirical mean F̂_N of N samples, which differs from F by at most ε_N = (B/√N)(1 + sqrt(2 ln(1/α)))
  with probability ≥ 1 − α (`stats.vector_mean_deviation`). Hence, for two runs with N samples each at
  e and e', ‖F̂_N(e) − F̂_N(e')‖₂ ≤ 2B·TV + 2ε_N with probability ≥ 1 − 2α. Both numbers are reported:
  `expectation_bound` (on F, no probability) and `empirical_bound` (on what a user actually sees).
- the center image (`certify_center`, §2/§4d): center smoothing under "l2" or "tv2d" through
  `smoothgen.center.CenterSmoother`, whose input is the conditioning tensor.
- the content (`certify_content`, §4f): for a classifier c of outputs, Cohen's CERTIFY on the randomized
  base classifier h(e + ε, ω) = c(G(e + ε, ω)) (`smoothgen.classify.SmoothedClassifier`, unchanged):
  the class A of what is generated is certified for ‖e − e'‖₂ < σ·Φ⁻¹(pA_lower), pA_lower the
  Clopper–Pearson bound from n fresh estimation samples minus the sampler's τ.

Randomness: the embedding noise comes from the engine's keyed streams (`RandomStream(seed, request)`),
the sampler randomness of copy i (initial latent and every step's noise) from a second keyed Philox
stream (`ConditionalGenerator`): a pure function of (seed, request, i). Runs are reproducible and the
noise does not depend on the batch size.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from smoothgen import stats
from smoothgen.center import CenterSmoother
from smoothgen.certificates import CenterCertificate, ClassificationCertificate
from smoothgen.classify import SmoothedClassifier
from smoothgen.engine import Purpose, RandomStream, Runtime, Sampler, as_runtime, noise_tv
from smoothgen.engine.noise import NoiseKey, NoiseSource
from smoothgen.engine.reducers import Reducer, describe
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.models.ddpm import DigitsDDPM, respaced_timesteps, sample
from smoothgen.validate import check_alpha, check_count, check_input, check_positive, check_shape, check_sigma

__all__ = [
    "DEFAULT_GENERATION_BATCH",
    "ConditionalGenerator",
    "ContentCertificate",
    "DiffusersGenerator",
    "DiffusionGenerator",
    "GenerationTVBound",
    "MeanCertificate",
    "MeanSmoother",
    "SmoothedConditionalDiffusion",
]

#: The tag of the generator's own stream (sampler randomness ω) in the engine's key derivation
#: (`RandomStream.state`: fixed-width seed, request id and tag), so that it never coincides with the
#: engine's input-noise streams (tags = purposes 0..5) nor with DiffSmooth's local-noise stream
#: (smoothgen.denoise.LOCAL_NOISE_STREAM_TAG).
GENERATION_STREAM_TAG = 0xC0DD1F

#: Copies sampled at once. The pre-drawn sampler noise of a batch is batch × steps × 64 float32, which
#: bounds memory: 256 copies × 1000 steps = 65 MB.
DEFAULT_GENERATION_BATCH = 256

#: Number of copies a generator stream can address (the NoiseSource length).
_STREAM_LENGTH = 1 << 62


class ConditionalGenerator(nn.Module):
    """A randomized base generator: a batch of conditioning tensors -> one generated image each, in [0, 1].

    The one interface `SmoothedConditionalDiffusion` samples through, whatever the model behind it
    (the embedded digits DDPM: `DiffusionGenerator`; any diffusers UNet and scheduler:
    `DiffusersGenerator`). Copy number i since the last `reseed` gets sampler noise (its initial latent
    and every step's noise) that is a pure function of (seed, request_id, i), drawn with the engine's
    counter-based Philox noise (engine/noise.py), so results do not depend on how copies are cut into
    batches and the sampler randomness ω is independent of the conditioning noise ε (docs/theory.md §4a).
    Copies are numbered in call order: a generator serves one request at a time (the in-process
    `Sampler`), not the multi-request `Scheduler`, which would interleave requests.

    Subclasses set `cond_shape` (one conditioning tensor, no batch dimension), `output_shape` (one
    image) and `_noise_shape` (standard normal numbers one copy's sampler draws), and implement `forward`.
    """

    cond_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    _noise_shape: tuple[int, ...]

    @property
    def embed_dim(self) -> int:
        """The number of values of one conditioning tensor (D for a [D] vector)."""
        return math.prod(self.cond_shape)

    def reseed(self, seed: int | None, request_id: int = 0) -> None:
        """Restart the sampler-noise stream at copy 0, keyed by (seed, request_id).

        Args:
            seed: Integer in [0, 2⁶⁴) or None (fresh OS entropy).
            request_id: Distinguishes requests that share a seed (integer in [0, 2⁶⁴)).

        Raises:
            InvalidParameterError: a seed or request id outside [0, 2⁶⁴).
        """
        if seed is not None:
            seed = check_count(seed, "seed", minimum=0)
        request_id = check_count(request_id, "request_id", minimum=0)
        # The engine's fixed-width key derivation: a list [seed, request_id, tag] of variable-width entries
        # would give (s + b·2³², r) and (s, b + r·2³²) the same stream.
        self._key = NoiseKey(RandomStream(seed, request_id).state(GENERATION_STREAM_TAG))
        self._source: NoiseSource | None = None
        self._copies = 0

    def _noise(self, count: int, device: torch.device) -> torch.Tensor:
        """Standard normal sampler noise of the next `count` copies: [count, *_noise_shape]."""
        shape = tuple(self._noise_shape)
        if self._source is None or self._source.x.device != device:
            self._source = NoiseSource(torch.zeros(shape, device=device), 1.0, _STREAM_LENGTH, self._key)
        out = torch.empty((count, *shape), device=device)
        self._source.fill(out, self._copies)
        self._copies += count
        return out

    def _check_conditioning(self, embeds: Any) -> torch.Tensor:
        if not isinstance(embeds, torch.Tensor) or not torch.is_floating_point(embeds):
            raise InvalidInputError(f"conditioning vectors must be a floating tensor, got {describe(embeds)}")
        if embeds.ndim != 1 + len(self.cond_shape) or tuple(embeds.shape[1:]) != tuple(self.cond_shape):
            shape = ", ".join(str(d) for d in self.cond_shape)
            raise InvalidInputError(f"conditioning vectors must have shape [b, {shape}], got {tuple(embeds.shape)}")
        return embeds


class DiffusionGenerator(ConditionalGenerator):
    """The embedded class-conditional digits DDPM as a randomized base generator.

    Args:
        ddpm: The class-conditional noise-prediction network (`DigitsDDPM`).
        guidance: Classifier-free guidance weight w ≥ 0 (the unconditional branch uses the null class's
            embedding, which does not depend on the perturbed vector).
        num_steps: Sampling steps (None: all T of the schedule; fewer: evenly respaced).
        seed: Seed of the sampler-noise stream (None: fresh OS entropy, not reproducible).

    Shapes:
        input: [b, embed_dim] conditioning vectors; output: [b, 1, 8, 8] images in [0, 1].
    """

    def __init__(self, ddpm: DigitsDDPM, guidance: float = 0.0, num_steps: int | None = None, seed: int | None = None):
        super().__init__()
        for attribute in ("class_embedding", "embed_dim", "null_class", "num_classes", "num_timesteps", "betas"):
            if not hasattr(ddpm, attribute):
                raise InvalidParameterError(f"ddpm must be a class-conditional DigitsDDPM; it has no {attribute!r}")
        self.ddpm = ddpm
        self.guidance = _check_guidance(guidance)
        try:
            self.timesteps = respaced_timesteps(int(ddpm.num_timesteps), num_steps)
        except ValueError as exc:
            raise InvalidParameterError(str(exc)) from exc
        self.num_steps = int(self.timesteps.numel())
        self.reseed(seed)

    @property
    def cond_shape(self) -> tuple[int, ...]:
        return (int(self.ddpm.embed_dim),)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.ddpm.sample_shape)

    @property
    def _noise_shape(self) -> tuple[int, ...]:
        return (self.num_steps, *self.ddpm.sample_shape)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Generate one image per conditioning vector. Shapes: [b, embed_dim] -> [b, 1, 8, 8]."""
        embeds = self._check_conditioning(embeds)
        device = self.ddpm.betas.device
        noise = self._noise(embeds.shape[0], device)
        num_steps = None if self.num_steps == int(self.ddpm.num_timesteps) else self.num_steps
        return sample(self.ddpm, class_embed=embeds.to(device), guidance=self.guidance, num_steps=num_steps, noise=noise)

    def extra_repr(self) -> str:
        return f"guidance={self.guidance}, num_steps={self.num_steps}"


def _check_guidance(guidance: Any) -> float:
    ok = isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and math.isfinite(guidance)
    if not ok or guidance < 0:
        raise InvalidParameterError(f"guidance must be a finite number >= 0, got {guidance!r}")
    return float(guidance)


def _is_a(obj: Any, class_name: str) -> bool:
    """isinstance by class name, so that this module never imports diffusers (an optional extra)."""
    return any(klass.__name__ == class_name for klass in type(obj).__mro__)


def _latent_shape(unet: nn.Module) -> tuple[int, ...] | None:
    """(in_channels, H, W) from a diffusers UNet's config, or None when it does not say."""
    config = getattr(unet, "config", None)
    channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
    if isinstance(size, Integral) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(channels, Integral) or not isinstance(size, (tuple, list)) or len(size) != 2:
        return None
    return (int(channels), int(size[0]), int(size[1]))


class DiffusersGenerator(ConditionalGenerator):
    """Any diffusers UNet + DDPM/DDIM scheduler as a randomized base generator of a conditioning tensor.

    Each copy runs the scheduler's reverse process from its own initial latent x_T, conditioned on its
    (noisy) conditioning tensor, which the UNet receives as `encoder_hidden_states` (the prompt embeddings
    of a diffusers pipeline, `UNet2DConditionModel`), as `class_labels` (a `UNet2DModel` with
    `class_embed_type="identity"`, or a `UNet2DConditionModel` with a "projection" class embedding), or as
    whatever keyword arguments `condition_on(cond)` returns. The scheduler's randomness (x_T and every
    step's noise) is pre-drawn per copy from the keyed Philox stream (`ConditionalGenerator`):
    - schedulers whose `step` takes `variance_noise` (DDIMScheduler with eta > 0, ...) get it;
    - DDPMScheduler (whose `step` draws its own noise): x̂_0 from its `step`, then the DDPM posterior
      step x_{t−1} = c_0·x̂_0 + c_t·x_t + std_t·z (Ho et al. 2020, eqs. 6–7, the scheduler's own
      alphas_cumprod, timesteps and variance type), z the copy's pre-drawn noise. Other schedulers are
      refused: their own draws would not be keyed per copy.
    Classifier-free guidance with weight w: ε̂ = (1 + w)·ε(x_t, c) − w·ε(x_t, c_∅) (diffusers'
    guidance_scale = 1 + w), where c_∅ = `null_conditioning` does not depend on the perturbed input.

    The final latents are mapped to images in [0, 1]: (x + 1)/2 (diffusers' [−1, 1] image convention),
    or `decode(latents)` (e.g. a VAE decoder) with its `output_shape`, and clamped to [0, 1].

    Args:
        unet: A diffusers `UNet2DConditionModel` or `UNet2DModel` (or any module with the same call
            convention: unet(sample, timestep, **conditioning) -> an output with `.sample`, or a tensor).
        scheduler: A diffusers `DDPMScheduler` or `DDIMScheduler` (or another whose step takes
            `variance_noise`). A private copy is set to `num_steps`; the caller's is left as it was.
        cond_shape: Shape of one conditioning tensor (e.g. (77, 768) for a CLIP prompt, (384,) for a
            sentence embedding). Default: the shape of `null_conditioning`.
        num_steps: Inference steps (None: the scheduler's num_train_timesteps).
        guidance: Classifier-free guidance weight w ≥ 0 (w > 0 needs `null_conditioning`).
        null_conditioning: The unconditional conditioning tensor [*cond_shape] (e.g. the empty prompt's).
        condition_on: The UNet keyword that takes the conditioning tensor, or a callable mapping a batch
            of them to the UNet's keyword arguments.
        eta: DDIM's η (0: deterministic steps from x_T; 1: DDPM-like), for schedulers whose step takes it.
        sample_shape: Shape of one latent (default: (in_channels, sample_size, sample_size) from the
            UNet's config).
        decode: Maps final latents [b, *sample_shape] to images [b, *output_shape] (default: (x + 1)/2).
        output_shape: Shape of one decoded image (required with `decode`).
        seed: Seed of the sampler-noise stream (None: fresh OS entropy).

    Shapes:
        input: [b, *cond_shape]; output: [b, *output_shape] in [0, 1].
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        cond_shape: tuple[int, ...] | None = None,
        *,
        num_steps: int | None = None,
        guidance: float = 0.0,
        null_conditioning: torch.Tensor | None = None,
        condition_on: str | Callable[[torch.Tensor], dict[str, Any]] = "encoder_hidden_states",
        eta: float = 0.0,
        sample_shape: tuple[int, ...] | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_shape: tuple[int, ...] | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if not isinstance(unet, nn.Module):
            raise InvalidParameterError(f"unet must be a torch module (a diffusers UNet), got {type(unet).__name__}")
        self.unet = unet
        self.guidance = _check_guidance(guidance)
        if isinstance(condition_on, str):
            if not condition_on.isidentifier():
                raise InvalidParameterError(f"condition_on must name a keyword of the UNet, got {condition_on!r}")
        elif not callable(condition_on):
            raise InvalidParameterError(f"condition_on must be a keyword name or a callable, got {type(condition_on).__name__}")
        self.condition_on = condition_on
        if null_conditioning is not None:
            null_conditioning = check_input(null_conditioning).detach().to("cpu", torch.float32).clone()
        if cond_shape is None:
            if null_conditioning is None:
                raise InvalidParameterError("pass cond_shape (the shape of one conditioning tensor) or null_conditioning")
            cond_shape = tuple(null_conditioning.shape)
        cond_shape = check_shape(cond_shape, "cond_shape")
        if not cond_shape:
            raise InvalidParameterError("cond_shape must have at least one dimension")
        self._cond_shape = cond_shape
        if null_conditioning is not None and tuple(null_conditioning.shape) != cond_shape:
            raise InvalidParameterError(
                f"null_conditioning has shape {tuple(null_conditioning.shape)}, expected cond_shape {cond_shape}"
            )
        if self.guidance > 0 and null_conditioning is None:
            raise InvalidParameterError("guidance > 0 needs null_conditioning (the unconditional conditioning tensor)")
        self.register_buffer("null_conditioning", null_conditioning, persistent=False)
        self.scheduler = self._private_scheduler(scheduler, num_steps)
        self.num_steps = int(len(self.scheduler.timesteps))
        self.eta = check_positive(eta, "eta", allow_zero=True)
        step_parameters = inspect.signature(self.scheduler.step).parameters
        self._variance_noise = "variance_noise" in step_parameters
        self._takes_eta = "eta" in step_parameters
        if self.eta > 0 and "eta" not in step_parameters:
            raise InvalidParameterError(f"eta applies to DDIM-type schedulers; {type(scheduler).__name__}.step takes none")
        if not self._variance_noise and not _is_a(scheduler, "DDPMScheduler"):
            raise InvalidParameterError(
                f"{type(scheduler).__name__} draws its own noise in step(); smoothgen keys every copy's sampler noise, "
                "so it takes a DDPMScheduler, a DDIMScheduler or a scheduler whose step takes variance_noise"
            )
        sample_shape = _latent_shape(unet) if sample_shape is None else check_shape(sample_shape, "sample_shape")
        if sample_shape is None:
            raise InvalidParameterError("the UNet's config does not give in_channels and sample_size: pass sample_shape")
        self.sample_shape = sample_shape
        if decode is not None and not callable(decode):
            raise InvalidParameterError(f"decode must be a callable of a batch of latents, got {type(decode).__name__}")
        if decode is not None and output_shape is None:
            raise InvalidParameterError("decode needs output_shape (the shape of one decoded image)")
        self.decode = decode
        self._output_shape = sample_shape if output_shape is None else check_shape(output_shape, "output_shape")
        self.reseed(seed)

    @staticmethod
    def _private_scheduler(scheduler: Any, num_steps: int | None) -> Any:
        for attribute in ("step", "set_timesteps", "config"):
            if not hasattr(scheduler, attribute):
                raise InvalidParameterError(f"scheduler must be a diffusers scheduler; {type(scheduler).__name__} has no {attribute!r}")
        total = getattr(scheduler.config, "num_train_timesteps", None)
        if not isinstance(total, Integral) or total < 1:
            raise InvalidParameterError("the scheduler's config has no num_train_timesteps")
        num_steps = int(total) if num_steps is None else num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, Integral) or not 1 <= num_steps <= total:
            raise InvalidParameterError(f"num_steps must be an integer in [1, {total}], got {num_steps!r}")
        private = copy.deepcopy(scheduler)
        try:
            private.set_timesteps(int(num_steps))
        except (ValueError, TypeError) as exc:
            raise InvalidParameterError(f"the scheduler refused num_steps={num_steps}: {exc}") from exc
        return private

    @property
    def cond_shape(self) -> tuple[int, ...]:
        return self._cond_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._output_shape

    @property
    def _noise_shape(self) -> tuple[int, ...]:
        # Slot 0: the initial latent x_T; slot k + 1: the noise of the k-th step.
        return (self.num_steps + 1, *self.sample_shape)

    def _unet_kwargs(self, cond: torch.Tensor) -> dict[str, Any]:
        if isinstance(self.condition_on, str):
            return {self.condition_on: cond}
        kwargs = self.condition_on(cond)
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise InvalidParameterError(f"condition_on must return a dict of UNet keyword arguments, got {describe(kwargs)}")
        return kwargs

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's output at (x, t), with classifier-free guidance when w > 0."""
        b = x.shape[0]
        if self.guidance > 0:
            null = self.null_conditioning.to(cond.device, cond.dtype).expand(b, *self.cond_shape)
            x, cond = torch.cat([x, x]), torch.cat([cond, null])
        out = self.unet(x, t.to(x.device), **self._unet_kwargs(cond))
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape[0] != x.shape[0]:
            raise ModelOutputError(f"the UNet returned {describe(out)} for a batch of {x.shape[0]}")
        if self.guidance > 0:
            conditional, unconditional = out.chunk(2)
            return (1.0 + self.guidance) * conditional - self.guidance * unconditional
        return out

    def _step(self, out: torch.Tensor, t: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_{t−1} from the scheduler, with z (the copy's pre-drawn standard normal noise) as its noise."""
        scheduler = self.scheduler
        if self._variance_noise:
            kwargs: dict[str, Any] = {"variance_noise": z}
            if self._takes_eta:
                kwargs["eta"] = self.eta
            return scheduler.step(out, t, x, **kwargs).prev_sample
        # DDPMScheduler: its x̂_0 (prediction type, clipping, thresholding), then its posterior step.
        throwaway = torch.Generator(device=out.device).manual_seed(0)  # step() draws noise we do not use
        x0 = scheduler.step(out, t, x, generator=throwaway).pred_original_sample
        predicted_variance = None
        if out.shape[1] == 2 * x.shape[1] and scheduler.variance_type in ("learned", "learned_range"):
            predicted_variance = out[:, x.shape[1]:]
        prev_t = scheduler.previous_timestep(t)
        alpha_prod_t = scheduler.alphas_cumprod[t]
        alpha_prod_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
        beta_prod_t = 1 - alpha_prod_t
        current_alpha = alpha_prod_t / alpha_prod_prev
        mean = (alpha_prod_prev**0.5 * (1 - current_alpha) / beta_prod_t) * x0 + (
            current_alpha**0.5 * (1 - alpha_prod_prev) / beta_prod_t
        ) * x
        if not t > 0:
            return mean
        variance = scheduler._get_variance(t, predicted_variance=predicted_variance)
        if scheduler.variance_type == "fixed_small_log":
            std = variance
        elif scheduler.variance_type == "learned_range":
            std = torch.exp(0.5 * variance)
        else:
            std = variance**0.5
        return mean + std * z.to(mean.dtype)

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Generate one image per conditioning tensor. Shapes: [b, *cond_shape] -> [b, *output_shape] in [0, 1]."""
        embeds = self._check_conditioning(embeds)
        parameter = next(self.unet.parameters(), None)
        device = parameter.device if parameter is not None else embeds.device
        dtype = parameter.dtype if parameter is not None and torch.is_floating_point(parameter) else torch.float32
        cond = embeds.to(device, dtype)
        noise = self._noise(embeds.shape[0], device)
        # Every batch starts the scheduler afresh: multistep schedulers (DPM-Solver) keep a step index
        # and past outputs, which must not leak from one batch of copies into the next.
        self.scheduler.set_timesteps(self.num_steps)
        x = noise[:, 0] * self.scheduler.init_noise_sigma
        for k, t in enumerate(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(x, t).to(dtype)
            out = self._predict(model_input, t, cond).to(x.dtype)
            x = self._step(out, t, x, noise[:, k + 1])
        images = (x + 1.0) / 2.0 if self.decode is None else self.decode(x)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != (embeds.shape[0], *self.output_shape):
            raise ModelOutputError(f"decode returned {describe(images)}, expected [{embeds.shape[0]}, *{self.output_shape}]")
        return images.float().clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return (
            f"cond_shape={self.cond_shape}, num_steps={self.num_steps}, guidance={self.guidance}, eta={self.eta}, "
            f"scheduler={type(self.scheduler).__name__}"
        )


# --------------------------------------------------------------------------------------------------
# Mean smoothing (docs/theory.md §4e)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCertificate:
    """Mean smoothing of a bounded generator: the mean output and how far it can move (docs/theory.md §4e).

    For every input e' with ‖e − e'‖₂ ≤ radius:
    - ‖F(e) − F(e')‖₂ ≤ expectation_bound, for the expectation F = E f (no probability involved);
    - ‖F̂_N(e) − F(e)‖₂ ≤ estimation_radius with probability ≥ 1 − alpha (this run's mean `mean`);
    - ‖F̂_N(e) − F̂_N(e')‖₂ ≤ empirical_bound = expectation_bound + 2·estimation_radius with probability
      ≥ 1 − 2·alpha, for a run at e' with the same n and alpha.

    Attributes:
        mean: F̂_N(e), the average of the n clipped outputs (not in `to_record`).
        radius: R, the ℓ2 radius in input (conditioning-embedding) space.
        tv: 2Φ(R/(2σ)) − 1, the TV bound between the noisy-input distributions.
        output_bound: B, the largest ‖f − c‖₂ of a clipped output around the box center c.
        expectation_bound: 2B·tv.
        estimation_radius: (B/√n)(1 + sqrt(2 ln(1/α))) + 2B·noise_tv (the sampled noise is within
            noise_tv of the Gaussian per copy, so the sampler's mean is within 2B·noise_tv of F).
        empirical_bound: expectation_bound + 2·estimation_radius.
        output_range: the box [lo, hi] every output coordinate was clipped to.
        covered_labels: for a class-conditional model, the labels j whose embedding lies within the
            radius of this label's (a label change the certificate covers); empty otherwise.
        label: the class whose embedding was the input, or None for a raw conditioning vector.
    """

    mean: Any
    radius: float
    tv: float
    output_bound: float
    expectation_bound: float
    estimation_radius: float
    empirical_bound: float
    output_range: tuple[float, float]
    sigma: float
    n: int
    alpha: float
    seed: int | None
    covered_labels: tuple[int, ...] = ()
    label: int | None = None
    certified: bool = True
    noise_tv: float = 0.0

    def to_record(self) -> dict[str, Any]:
        record = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "mean"}
        record["output_range"] = list(self.output_range)
        record["covered_labels"] = list(self.covered_labels)
        return record


def _check_finite(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise InvalidParameterError(f"{name} must hold finite numbers, got {value!r}")
    return float(value)


class _ClampedSum(Reducer):
    """Sum of outputs clipped to [lo, hi]: the only thing the mean needs (memory O(output size))."""

    def __init__(self, lo: float, hi: float, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.lo, self.hi = lo, hi
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, outputs: Any, batch: int) -> None:
        if not isinstance(outputs, torch.Tensor) or not torch.is_floating_point(outputs) or outputs.ndim < 1:
            raise ModelOutputError(f"the generator must return a floating tensor [b, ...], got {describe(outputs)}")
        if outputs.shape[0] != batch:
            raise ModelOutputError(f"the generator returned {outputs.shape[0]} outputs for a batch of {batch}")
        if self.total is not None and tuple(outputs.shape[1:]) != tuple(self.total.shape):
            raise ModelOutputError(f"output shape changed from {tuple(self.total.shape)} to {tuple(outputs.shape[1:])}")
        self._flag_nonfinite(outputs)  # NaN would pass through clamp
        part = outputs.double().clamp(self.lo, self.hi).sum(dim=0)
        self.total = part if self.total is None else self.total + part
        self.count += batch

    def result(self) -> tuple[torch.Tensor, int]:
        self._raise_if_bad()
        return self.total.cpu(), self.count


class MeanSmoother:
    """Mean smoothing of a randomized generator whose outputs are clipped to a box (docs/theory.md §4e).

    F̂_N(x) = (1/N) Σ_i clip(f(x + ε_i), lo, hi), ε_i ~ N(0, σ²I), with f free to use its own
    randomness as long as it is independent of ε. A generator with a `reseed(seed, request_id)` method
    (`DiffusionGenerator`) is reseeded at the start of every request.

    Args:
        generator: A module, Runtime or callable: a batch [b, *input_shape] -> outputs [b, *out].
        sigma: Noise standard deviation σ > 0.
        output_range: (lo, hi): every output coordinate is clipped to it, so ‖f − c‖₂ ≤ B is known.
        batch_size: Noisy copies per generator call.
        input_shape: If given, inputs of any other shape are rejected.
        sampler: The Sampler to draw with.
    """

    def __init__(
        self,
        generator: nn.Module | Runtime | Callable,
        sigma: float,
        output_range: tuple[float, float] = (0.0, 1.0),
        batch_size: int = DEFAULT_GENERATION_BATCH,
        input_shape: tuple[int, ...] | None = None,
        sampler: Sampler | None = None,
    ):
        self.generator = generator
        self.runtime = as_runtime(generator)
        self.sigma = check_sigma(sigma)
        lo, hi = (_check_finite(v, "output_range") for v in output_range)
        if not lo < hi:
            raise InvalidParameterError(f"output_range must be (lo, hi) with lo < hi, got {output_range!r}")
        self.output_range = (lo, hi)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.sampler = sampler if sampler is not None else Sampler(batch_size)

    def output_bound(self, output_numel: int) -> float:
        """B = (hi − lo)·sqrt(k)/2: the largest ‖f − c‖₂ of a clipped output of k coordinates around the center c."""
        lo, hi = self.output_range
        return 0.5 * (hi - lo) * math.sqrt(output_numel)

    def certify(
        self,
        x: torch.Tensor,
        radius: float,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        request_id: int = 0,
    ) -> MeanCertificate:
        """The mean of n clipped outputs at x, with the §4e bounds for inputs within `radius`.

        Args:
            x: One input (no batch dimension).
            radius: R ≥ 0, the ℓ2 input radius.
            n: Samples averaged.
            alpha: Error probability of the estimation radius.
            seed, request_id: The request's random streams (input noise and generator randomness).

        Shapes:
            x: [*input_shape]; the mean has the generator's output shape.
        """
        x = check_input(x, self.input_shape)
        radius = check_positive(radius, "radius", allow_zero=True)
        n = check_count(n, "n")
        alpha = check_alpha(alpha)
        if hasattr(self.generator, "reseed"):
            self.generator.reseed(seed, request_id)
        key = RandomStream(seed, request_id).key(Purpose.ESTIMATION)
        total, count = self.sampler.run(self.runtime, x, n, self.sigma, key, _ClampedSum(*self.output_range, self.runtime.device))
        mean = (total / count).to(torch.float32)
        bound = self.output_bound(mean.numel())
        expectation = stats.mean_smoothing_bound(bound, radius, self.sigma)
        # The n outputs estimate the mean under the sampler, which is within 2B·τ of F (Gaussian noise).
        tau = noise_tv(x.numel())
        deviation = stats.vector_mean_deviation(bound, n, alpha) + 2.0 * bound * tau
        return MeanCertificate(
            mean=mean,
            radius=radius,
            tv=stats.tv_bound(radius, self.sigma),
            output_bound=bound,
            expectation_bound=expectation,
            estimation_radius=deviation,
            empirical_bound=expectation + 2.0 * deviation,
            output_range=self.output_range,
            sigma=self.sigma,
            n=n,
            alpha=alpha,
            seed=seed,
            noise_tv=tau,
        )


# --------------------------------------------------------------------------------------------------
# The smoothed class-conditional DDPM
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationTVBound:
    """The sample-free §4a bound on ONE generated sample, for every conditioning vector within `radius`.

    Attributes:
        radius: R, ℓ2 in conditioning-embedding space.
        tv: TV(P_e, P_e') ≤ 2Φ(R/(2σ)) − 1 + 2·noise_tv (the samples' noise is within noise_tv of the
            Gaussian at each input).
        w1_l2: W1 of the output distributions under the ℓ2 distance of images ≤ D·tv, D = the ℓ2
            diameter of the output space [0, 1]^k (= 8 for 8×8 digits).
        covered_labels: labels whose embedding lies within R of this label's (empty for a raw vector).
    """

    radius: float
    sigma: float
    tv: float
    w1_l2: float
    covered_labels: tuple[int, ...] = ()
    label: int | None = None
    certified: bool = True
    noise_tv: float = 0.0

    def to_record(self) -> dict[str, Any]:
        record = {k: getattr(self, k) for k in self.__dataclass_fields__}
        record["covered_labels"] = list(self.covered_labels)
        return record


@dataclass(frozen=True)
class ContentCertificate(ClassificationCertificate):
    """The certified content of what is generated (docs/theory.md §4f): Cohen's CERTIFY on h(e) = c(G(e)).

    With probability ≥ 1 − alpha over the sampling: for every conditioning tensor e' with
    ‖e − e'‖₂ < radius (Frobenius norm for a [L, D] tensor), the smoothed content classifier
    g(e') = argmax_k P(c(G(e' + ε, ω)) = k) equals `prediction`. Equivalently (the event form of §4a),
    one generated sample at e' is classified `prediction` with probability > 1/2.

    Attributes:
        prediction: the certified class of the generated output, or ABSTAIN (−1).
        radius: σ·Φ⁻¹(p_lower) in conditioning-embedding units (0 when abstaining).
        p_lower: one-sided (1 − alpha) Clopper–Pearson lower bound on P(c(G(e + ε, ω)) = selected)
            from the n estimation samples, minus noise_tv (the sampled ε is within τ of N(0, σ²I)).
        count: estimation samples classified `selected` (nA).
        selected: the class chosen from the n0 selection samples (also when abstaining).
        samples: estimation samples drawn (< n only on an early abstention that the full run shares).
        covered_labels: for a model with labels, the labels whose conditioning lies strictly within
            the radius (label changes that keep the content); empty for a raw conditioning tensor.
        label: the label whose conditioning was the input, or None.
    """

    # The fields of ClassificationCertificate (CERTIFY's own result), then these:
    num_classes: int = dataclasses.field(kw_only=True)
    label: int | None = dataclasses.field(default=None, kw_only=True)
    covered_labels: tuple[int, ...] = dataclasses.field(default=(), kw_only=True)

    @property
    def certified(self) -> bool:
        return not self.abstained

    def to_record(self) -> dict[str, Any]:
        record = {k: getattr(self, k) for k in self.__dataclass_fields__}
        record["covered_labels"] = list(self.covered_labels)
        record["certified"] = self.certified
        return record


class _ContentVotes(nn.Module):
    """The randomized base classifier of §4f: a batch of conditioning tensors -> logits c(G(e)).

    G keeps its own keyed sampler randomness ω (independent of ε); c is any classifier of outputs.
    """

    def __init__(self, generator: ConditionalGenerator, classifier: Callable, num_classes: int):
        super().__init__()
        self.generator = generator
        if isinstance(classifier, nn.Module):
            self.classifier = classifier
        else:
            self._classify = classifier  # a plain callable: not a submodule
        self.num_classes = num_classes

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        images = self.generator(embeds)
        classifier = self.classifier if "classifier" in self._modules else self._classify
        parameter = next(classifier.parameters(), None) if isinstance(classifier, nn.Module) else None
        if parameter is not None:
            images = images.to(parameter.device, parameter.dtype if torch.is_floating_point(parameter) else images.dtype)
        logits = classifier(images)
        if not isinstance(logits, torch.Tensor) or not torch.is_floating_point(logits):
            raise ModelOutputError(f"the content classifier must return floating logits, got {describe(logits)}")
        if tuple(logits.shape) != (embeds.shape[0], self.num_classes):
            raise ModelOutputError(
                f"the content classifier returned shape {tuple(logits.shape)}, expected [{embeds.shape[0]}, {self.num_classes}]"
            )
        return logits.to(embeds.device)


def _content_num_classes(classifier: Any, num_classes: Any) -> int:
    if isinstance(classifier, (str, bytes)) or not callable(classifier):
        raise InvalidParameterError(f"classifier must be a torch module or a callable of a batch of outputs, got {type(classifier).__name__}")
    if num_classes is None:
        num_classes = getattr(classifier, "num_classes", None)
        if num_classes is None:
            raise InvalidParameterError("pass num_classes: the classifier has no num_classes attribute")
    return check_count(num_classes, "num_classes", minimum=2)


class SmoothedConditionalDiffusion:
    """A conditional diffusion model smoothed with Gaussian noise on its conditioning tensor.

    Each output is one sample conditioned on e + ε (ε ~ N(0, σ²I)), with the sampler's own randomness;
    `certify_mean` averages N of them, `certify_center` takes their center (docs/theory.md §2). The model is
    either the embedded class-conditional digits DDPM (noise on its class embedding) or any
    `ConditionalGenerator`, e.g. a diffusers UNet + scheduler with the noise on its
    `encoder_hidden_states` / prompt embeddings (`from_diffusers`).

    Args:
        model: The class-conditional noise-prediction network (`smoothgen.models.load_ddpm()`), or a
            `ConditionalGenerator` (`DiffusersGenerator`), which then carries its own guidance and steps.
        sigma: σ > 0, in conditioning-embedding units (the embedded model's class embeddings are
            typically ≈ 8 apart, see `class_distances`; sentence embeddings of unit norm are ≤ 2 apart).
        guidance: Classifier-free guidance weight w ≥ 0 (the digits DDPM only).
        num_steps: Sampling steps (the digits DDPM only; None: all T = 1000; fewer: evenly respaced,
            much cheaper).
        batch_size: Copies sampled at once.
        label_conditionings: For a `ConditionalGenerator`: the conditioning tensor of each label, [K,
            *cond_shape] (e.g. the embedding of one prompt per class), so that labels can be passed and
            `class_distances` / `covered_labels` translate radii into label changes. The digits DDPM's
            labels are its class embeddings.

    Example:
        >>> from smoothgen.models import load_ddpm
        >>> smoothed = SmoothedConditionalDiffusion(load_ddpm(), sigma=1.0, num_steps=100)
        >>> cert = smoothed.certify_mean(3, radius=0.5, n=200, seed=0)   # cert.mean: [1, 8, 8]
        >>> text = SmoothedConditionalDiffusion.from_diffusers(unet, DDIMScheduler(), 0.1, cond_shape=(77, 768),
        ...                                                    num_steps=50)
        >>> images = text.samples(prompt_embeds=prompt_embeds[0], n=8, seed=0)   # [8, C, H, W]
    """

    def __init__(
        self,
        model: DigitsDDPM | ConditionalGenerator,
        sigma: float,
        *,
        guidance: float = 0.0,
        num_steps: int | None = None,
        batch_size: int = DEFAULT_GENERATION_BATCH,
        label_conditionings: torch.Tensor | None = None,
    ):
        self.sigma = check_sigma(sigma)
        if isinstance(model, ConditionalGenerator):
            if guidance != 0.0 or num_steps is not None:
                raise InvalidParameterError("a ConditionalGenerator carries its own guidance and num_steps: set them on it")
            self.generator = model
            self.ddpm = None
            self._labels = None if label_conditionings is None else self._check_label_table(label_conditionings)
        else:
            if _is_a(model, "ModelMixin"):  # a diffusers model: not the digits DDPM
                raise InvalidParameterError(
                    f"a diffusers {type(model).__name__} needs a scheduler: use "
                    "SmoothedConditionalDiffusion.from_diffusers(unet, scheduler, sigma, ...)"
                )
            if label_conditionings is not None:
                raise InvalidParameterError("the digits DDPM's labels are its class embeddings; label_conditionings is for generators")
            self.generator = DiffusionGenerator(model, guidance, num_steps)
            self.ddpm = model
            self._labels = None
        self.sampler = Sampler(batch_size)
        self.image_numel = math.prod(self.generator.output_shape)
        self._mean = MeanSmoother(self.generator, self.sigma, (0.0, 1.0), input_shape=self.cond_shape, sampler=self.sampler)

    @classmethod
    def from_diffusers(
        cls,
        unet: nn.Module,
        scheduler: Any,
        sigma: float,
        *,
        cond_shape: tuple[int, ...] | None = None,
        num_steps: int | None = 50,
        guidance: float = 0.0,
        null_conditioning: torch.Tensor | None = None,
        condition_on: str | Callable[[torch.Tensor], dict[str, Any]] = "encoder_hidden_states",
        eta: float = 0.0,
        sample_shape: tuple[int, ...] | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_shape: tuple[int, ...] | None = None,
        label_conditionings: torch.Tensor | None = None,
        batch_size: int = DEFAULT_GENERATION_BATCH,
    ) -> "SmoothedConditionalDiffusion":
        """A diffusers UNet + scheduler smoothed on its conditioning tensor (see `DiffusersGenerator` for
        the arguments; cond_shape defaults to the shape of null_conditioning, else of one label's row).

        Shapes:
            conditioning tensors (prompt_embeds, class_embed, label_conditionings rows): [*cond_shape].
        """
        if cond_shape is None and null_conditioning is None and isinstance(label_conditionings, torch.Tensor):
            cond_shape = tuple(label_conditionings.shape[1:])
        generator = DiffusersGenerator(
            unet, scheduler, cond_shape, num_steps=num_steps, guidance=guidance, null_conditioning=null_conditioning,
            condition_on=condition_on, eta=eta, sample_shape=sample_shape, decode=decode, output_shape=output_shape,
        )
        return cls(generator, sigma, batch_size=batch_size, label_conditionings=label_conditionings)

    def _check_label_table(self, table: Any) -> torch.Tensor:
        if not isinstance(table, torch.Tensor) or not torch.is_floating_point(table):
            raise InvalidParameterError(f"label_conditionings must be a floating tensor [K, *cond_shape], got {describe(table)}")
        if table.ndim != 1 + len(self.cond_shape) or tuple(table.shape[1:]) != self.cond_shape or table.shape[0] < 1:
            raise InvalidParameterError(
                f"label_conditionings must have shape [K, {', '.join(map(str, self.cond_shape))}], got {tuple(table.shape)}"
            )
        if not bool(torch.isfinite(table).all()):
            raise InvalidParameterError("label_conditionings must be finite")
        return table.detach().to("cpu", torch.float32).clone()

    @property
    def cond_shape(self) -> tuple[int, ...]:
        """Shape of one conditioning tensor: (D,) for the digits DDPM."""
        return tuple(self.generator.cond_shape)

    @property
    def embed_dim(self) -> int:
        """Values in one conditioning tensor (D for the digits DDPM)."""
        return self.generator.embed_dim

    @property
    def num_classes(self) -> int:
        """Labels the model knows (0 for a generator without label_conditionings)."""
        if self.ddpm is not None:
            return int(self.ddpm.num_classes)
        return 0 if self._labels is None else int(self._labels.shape[0])

    @property
    def guidance(self) -> float:
        return self.generator.guidance

    @property
    def num_steps(self) -> int:
        return self.generator.num_steps

    @property
    def image_diameter(self) -> float:
        """ℓ2 diameter of the output space [0, 1]^k (8 for the 8×8 digits)."""
        return math.sqrt(self.image_numel)

    # -- the threat model: conditioning vectors and labels -------------------------------------------

    def _label_table(self) -> torch.Tensor:
        """The conditioning tensor of every label, [K, *cond_shape] (the DDPM's live class embeddings)."""
        if self.ddpm is not None:
            return self.ddpm.class_embedding.weight[: self.num_classes].detach()
        if self._labels is None:
            raise InvalidInputError("this model has no labels (no label_conditionings): pass prompt_embeds or class_embed")
        return self._labels

    def _check_label(self, label: Any) -> int:
        if self.ddpm is None and self._labels is None:
            raise InvalidInputError("this model has no labels (no label_conditionings): pass prompt_embeds or class_embed")
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not torch.is_floating_point(label):
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
            raise InvalidInputError(f"label must be an integer class in [0, {self.num_classes}), got {label!r}")
        return int(label)

    def embedding(self, label: int) -> torch.Tensor:
        """e_k, the conditioning tensor of a label (a detached float32 copy). Shapes: [*cond_shape]."""
        label = self._check_label(label)
        return self._label_table()[label].to("cpu", torch.float32).clone()

    def conditioning(
        self, label: int | None, class_embed: torch.Tensor | None, prompt_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int | None]:
        """The input of a request: a label's conditioning, or a raw conditioning tensor (class_embed and
        prompt_embeds are two names of it), and the label (None for a raw tensor)."""
        given = [v is not None for v in (label, class_embed, prompt_embeds)]
        if sum(given) != 1:
            raise InvalidParameterError("pass exactly one of label, class_embed and prompt_embeds")
        if label is not None:
            label = self._check_label(label)
            return self.embedding(label), label
        raw = class_embed if class_embed is not None else prompt_embeds
        return check_input(raw, self.cond_shape).detach().to("cpu", torch.float32), None

    def class_distances(self, label: int) -> np.ndarray:
        """‖e_k − e_j‖₂ (Frobenius for tensors) for every label j (0 for j = k). Shapes: returns [num_classes] float64."""
        label = self._check_label(label)
        table = self._label_table().to("cpu", torch.float64).reshape(self.num_classes, -1)
        return (table - table[label]).norm(dim=1).numpy()

    def covered_labels(self, label: int, radius: float) -> tuple[int, ...]:
        """The labels j ≠ k with ‖e_k − e_j‖ ≤ radius: the label changes a certificate at `radius` covers."""
        radius = check_positive(radius, "radius", allow_zero=True)
        distances = self.class_distances(label)
        return tuple(int(j) for j in np.flatnonzero(distances <= radius) if j != label)

    def label_tv_bounds(self, label: int) -> dict[int, float]:
        """For every other class j: the §4a bound 2Φ(‖e_k − e_j‖/(2σ)) − 1 on TV(P_{e_k}, P_{e_j}).

        How far smoothing at this σ can make one sample of class k differ in distribution from one of
        class j; values near 1 mean the label still fully controls the output.
        """
        distances = self.class_distances(label)
        return {int(j): stats.tv_bound(float(d), self.sigma) for j, d in enumerate(distances) if j != label}

    # -- sampling and certificates ---------------------------------------------------------------

    def samples(
        self,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        n: int = 16,
        seed: int | None = None,
        request_id: int = 0,
    ) -> torch.Tensor:
        """n samples of the smoothed generator: each conditioned on its own e + ε_i.

        Each sample's distribution is the one `tv_bound` certifies. Shapes: returns [n, *output_shape]
        in [0, 1] ([n, 1, 8, 8] for the digits DDPM).
        """
        e, _ = self.conditioning(label, class_embed, prompt_embeds)
        n = check_count(n, "n")
        self.generator.reseed(seed, request_id)
        key = RandomStream(seed, request_id).key(Purpose.ESTIMATION)
        return self.sampler.outputs(as_runtime(self.generator), e, n, self.sigma, key)

    def tv_bound(self, radius: float, label: int | None = None) -> GenerationTVBound:
        """The sample-free §4a bound on one generated sample for conditioning moves of ℓ2 norm ≤ radius."""
        radius = check_positive(radius, "radius", allow_zero=True)
        tau = noise_tv(self.embed_dim)  # the samples' conditioning noise comes from the engine's sampler
        tv = stats.tv_bound(radius, self.sigma, tau)
        covered = () if label is None else self.covered_labels(label, radius)
        return GenerationTVBound(
            radius=radius,
            sigma=self.sigma,
            tv=tv,
            w1_l2=stats.wasserstein_bound(radius, self.sigma, self.image_diameter, noise_tv=tau),
            covered_labels=covered,
            label=label,
            noise_tv=tau,
        )

    def certify_mean(
        self,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        radius: float = 0.0,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        request_id: int = 0,
    ) -> MeanCertificate:
        """The mean of n smoothed samples, with its §4e certificate at `radius` (see `MeanCertificate`).

        Args:
            label: The class k (its embedding e_k is the input), or None with class_embed.
            class_embed: A raw conditioning tensor [*cond_shape] instead of a label.
            prompt_embeds: The same, under diffusers' name (one prompt's embeddings, no batch dimension).
            radius: R ≥ 0, ℓ2 in conditioning-embedding space.
            n: Samples averaged.
            alpha: Error probability of the estimation radius.
            seed, request_id: The request's random streams.

        Returns:
            A `MeanCertificate`; its mean has shape [*output_shape] ([1, 8, 8] for the digits DDPM).
        """
        e, label = self.conditioning(label, class_embed, prompt_embeds)
        cert = self._mean.certify(e, radius, n, alpha, seed, request_id)
        covered = () if label is None else self.covered_labels(label, cert.radius)
        return dataclasses.replace(cert, covered_labels=covered, label=label)

    def certify_center(
        self,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        eps_in: float = 0.0,
        metric: str = "l2",
        n: int = 1000,
        m: int = 1000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        alpha2: float = 0.005,
        n_candidates: int | None = None,
        seed: int | None = None,
        request_id: int = 0,
    ) -> CenterCertificate:
        """Center smoothing of the generated images (docs/theory.md §2, §4d) with the conditioning vector as input.

        With probability ≥ 1 − `failure_probability` (α1 + α2, plus the candidate miss when n_candidates
        is given), d(ẑ(e), ẑ(e')) ≤ eps_out for every ‖e − e'‖₂ ≤ eps_in. Its
        `smoothing_error` is the distance of the center to ONE sample of the unsmoothed generator at e
        (the base generator is itself random). Labels covered: `covered_labels(label, eps_in)`.

        Args:
            metric: "l2" or "tv2d" (any metric `smoothgen.metrics` knows for the output images works).
            Others: as `smoothgen.center.CenterSmoother.certify`.

        Returns:
            The `smoothgen.certificates.CenterCertificate`; its center has shape [*output_shape].
        """
        e, _ = self.conditioning(label, class_embed, prompt_embeds)
        smoother = CenterSmoother(
            self.generator, self.sigma, metric, n_candidates=n_candidates, input_shape=self.cond_shape, sampler=self.sampler
        )
        # One generator stream for the whole request: the center, check and radius samples (and the
        # smoothing-error sample) take consecutive, hence independent, stretches of it.
        self.generator.reseed(seed, request_id)
        return smoother.certify(e, eps_in, n, m, delta, alpha1, alpha2, seed, request_id)

    def certify_content(
        self,
        classifier: nn.Module | Callable,
        label: int | None = None,
        *,
        class_embed: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        num_classes: int | None = None,
        seed: int | None = None,
        request_id: int = 0,
    ) -> ContentCertificate:
        """Certify the class of what is generated (docs/theory.md §4f): Cohen's CERTIFY on h(e) = c(G(e)).

        h(e + ε, ω) = classifier(G(e + ε, ω)) is a randomized base classifier whose randomness ω (the
        sampler's own, keyed per copy) is independent of ε, so `smoothgen.classify.SmoothedClassifier.certify`
        applies unchanged (docs/theory.md §1): ĉA from n0 selection samples, nA among n FRESH estimation
        samples (the engine's SELECTION and ESTIMATION streams for ε; consecutive, hence disjoint,
        stretches of one generator stream for ω), pA_lower = Clopper–Pearson(nA, n, α) − τ with
        τ = noise_tv(numel of the conditioning tensor) (the same τ `tv_bound` and `certify_mean` charge),
        and R = σ·Φ⁻¹(pA_lower) when pA_lower > 1/2, else ABSTAIN.

        Args:
            classifier: A classifier of generated outputs: [b, *output_shape] -> logits [b, num_classes]
                (e.g. `smoothgen.models.load_classifier(0.0)` for the 8×8 digits).
            label, class_embed, prompt_embeds: The input (exactly one; as `certify_mean`).
            n0: Selection samples.
            n: Estimation samples.
            alpha: Failure probability of the certificate.
            num_classes: Classes of the classifier (default: its `num_classes` attribute).
            seed, request_id: The request's random streams (None seed: not reproducible).

        Returns:
            A `ContentCertificate`: with probability ≥ 1 − alpha, the smoothed content is `prediction`
            for every conditioning tensor within `radius` (ℓ2 / Frobenius) of the input.

        Shapes:
            class_embed / prompt_embeds: [*cond_shape].
        """
        num_classes = _content_num_classes(classifier, num_classes)
        e, label = self.conditioning(label, class_embed, prompt_embeds)
        n0 = check_count(n0, "n0")
        n = check_count(n, "n")
        alpha = check_alpha(alpha)
        votes = _ContentVotes(self.generator, classifier, num_classes)
        smoothed = SmoothedClassifier(votes, num_classes, self.sigma, input_shape=self.cond_shape, sampler=self.sampler,
                                      backend="eager")  # the votes draw the generator's own noise
        # One generator stream for the request: selection copies take ω_0..ω_{n0−1}, estimation copies the next ones.
        self.generator.reseed(seed, request_id)
        cert = smoothed.certify(e, n0, n, alpha, seed, request_id)
        covered = () if label is None or cert.abstained else self._strictly_covered(label, cert.radius)
        fields = {f.name: getattr(cert, f.name) for f in dataclasses.fields(ClassificationCertificate)}
        return ContentCertificate(**fields, num_classes=num_classes, label=label, covered_labels=covered)

    def _strictly_covered(self, label: int, radius: float) -> tuple[int, ...]:
        """Labels j ≠ k with ‖e_k − e_j‖ < radius (Cohen's certificate is for the open ball)."""
        distances = self.class_distances(label)
        return tuple(int(j) for j in np.flatnonzero(distances < radius) if j != label)
