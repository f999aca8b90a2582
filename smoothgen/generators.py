"""Conditional generators behind `smoothgen.conditional`: one noisy copy of a conditioning tensor in,
one sample out, with the sampler randomness ω of copy i a keyed Philox stream of its own — the embedded
class-conditional digits DDPM (`DiffusionGenerator`) and any diffusers UNet with its scheduler
(`DiffusersGenerator`)."""
from __future__ import annotations

import copy
import inspect
import math
from numbers import Integral
from typing import Any, Callable

import torch
from torch import nn

from smoothgen.engine import RandomStream
from smoothgen.engine.noise import NoiseKey, NoiseSource
from smoothgen.engine.reducers import describe
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.models.ddpm import DigitsDDPM, respaced_timesteps, sample
from smoothgen.validate import check_count, check_input, check_positive, check_shape


#: The tag of the generator's own stream (sampler randomness ω) in the engine's key derivation
#: (`RandomStream.state`: fixed-width seed, request id and tag), so that it never coincides with the
#: engine's input-noise streams (tags = purposes 0..5) nor with DiffSmooth's local-noise stream
#: (smoothgen.denoise.LOCAL_NOISE_STREAM_TAG).
GENERATION_STREAM_TAG = 0xC0DD1F


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
