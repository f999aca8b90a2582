"""Diffusion-purified smoothing: DDS (Carlini et al., ICLR 2023) and DiffSmooth (Zhang et al., USENIX Sec 2023).

docs/theory.md §3. A DDPM's noise-prediction network ε_θ turns a noisy input x + δ back into a clean-looking
image in one step, and a classifier trained on clean images labels it. Purifier and classifier together
are a randomized base classifier f; `SmoothedClassifier` runs Cohen's CERTIFY on top of it, unchanged,
at the global σ (the Gaussian noise δ comes from the smoothed classifier's sampler, not from here):

    smoothed = SmoothedClassifier(DDS(DiffusionPurifier(ddpm, sigma), classifier), 10, sigma)

One-shot purification (pixels in [0, 1] are mapped to [−1, 1], so the DDPM sees noise 2σ):
    t*  = the first t with sqrt(1 − ᾱ_t)/sqrt(ᾱ_t) ≥ 2σ
    x_t = sqrt(ᾱ_t*)·(2(x + δ) − 1)
    x̂0 = clip((x_t − sqrt(1 − ᾱ_t*)·ε_θ(x_t, t*)) / sqrt(ᾱ_t*), −1, 1), mapped back to [0, 1].
DDS: f(x + δ) = classifier(x̂0). DiffSmooth: f(x + δ) = argmax_c (1/m) Σ_j softmax(classifier(x̂0 + ε'_j))_c
with m local noises ε'_j ~ N(0, σ'²I). Both are torch modules from a batch of noisy inputs to a batch
of logits, so every backend, sampler and results file of smoothgen works with them as with any classifier.

The noise-prediction model is any torch module (or callable) ε_θ(x_t, t) whose `betas` attribute holds
its β schedule (the embedded `smoothgen.models.load_ddpm()` is one), or a diffusers `UNet2DModel` with
its `DDPMScheduler` through `diffusers_noise_model` (diffusers is optional and not a dependency).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from smoothgen import kernels
from smoothgen.engine.random import RandomStream
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelLoadError, ModelOutputError, SmoothgenError, first_line
from smoothgen.validate import check_count, check_sigma

#: The tag of DiffSmooth's local-noise stream in the engine's key derivation (`RandomStream.state`:
#: fixed-width seed, request id and tag), so that it never coincides with one of the sampler's streams
#: (tags = purposes 0..5) nor with a conditional generator's (smoothgen.conditional.GENERATION_STREAM_TAG).
LOCAL_NOISE_STREAM_TAG = 0xD1FF5


def alphas_cumprod(betas: Any, num_timesteps: int | None = None) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s), after checking the schedule.

    Args:
        betas: The β schedule (tensor, array or sequence), 0 < β_t < 1.
        num_timesteps: If given, the schedule length the noise model was trained with.

    Returns:
        ᾱ_0..ᾱ_{T−1} in float64 on the CPU.

    Raises:
        InvalidParameterError: betas is not a non-empty 1-D sequence of finite numbers in (0, 1), or
            its length differs from num_timesteps.

    Shapes:
        betas: [T] -> returns [T].
    """
    try:
        b = torch.as_tensor(betas.detach().cpu() if isinstance(betas, torch.Tensor) else np.asarray(betas, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"betas must be a 1-D array of numbers, got {type(betas).__name__}") from exc
    if b.ndim != 1 or b.numel() == 0 or not (torch.is_floating_point(b) or b.dtype in (torch.int32, torch.int64)):
        raise InvalidParameterError(f"betas must be a non-empty 1-D array of floats, got shape {tuple(b.shape)} ({b.dtype})")
    b = b.to(torch.float64)
    if not bool(torch.isfinite(b).all()) or not bool(((b > 0) & (b < 1)).all()):
        raise InvalidParameterError("every beta of the schedule must be finite and lie strictly between 0 and 1")
    if num_timesteps is not None and int(num_timesteps) != b.numel():
        raise InvalidParameterError(
            f"the noise model was trained with {int(num_timesteps)} timesteps but its schedule has {b.numel()} betas"
        )
    return torch.cumprod(1.0 - b, dim=0)


def select_timestep(alpha_bar: torch.Tensor, sigma: float) -> int:
    """t* = the first t with sqrt(1 − ᾱ_t)/sqrt(ᾱ_t) ≥ 2σ (docs/theory.md §3).

    The factor 2: pixels in [0, 1] are mapped to [−1, 1] for the DDPM, which doubles the noise.

    Args:
        alpha_bar: ᾱ_0..ᾱ_{T−1} (decreasing).
        sigma: The smoothing noise σ in [0, 1] pixel units.

    Returns:
        t*, 0-based.

    Raises:
        InvalidParameterError: sigma ≤ 0, or no timestep of the schedule is that noisy.
    """
    sigma = check_sigma(sigma)
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    ratio = torch.sqrt(1.0 - ab) / torch.sqrt(ab)
    hits = torch.nonzero(ratio >= 2.0 * sigma)
    if hits.numel() == 0:
        raise InvalidParameterError(
            f"sigma={sigma} is too large for this diffusion schedule: its noisiest step has "
            f"sqrt(1-abar)/sqrt(abar) = {float(ratio[-1]):.4g} < 2*sigma = {2 * sigma:.4g}"
        )
    return int(hits[0, 0])


def _noise_output(out: Any) -> Any:
    # diffusers' UNet2DModel returns an output object with `.sample`; some models return (eps, ...).
    if hasattr(out, "sample") and isinstance(getattr(out, "sample"), torch.Tensor):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


class DiffusionPurifier(nn.Module):
    """One-shot DDPM denoising at the timestep matching σ: x + δ ↦ x̂0 (docs/theory.md §3).

    Args:
        noise_model: ε_θ, called as noise_model(x_t, t) with x_t [b, *shape] in the [−1, 1] scale and
            t [b] int64 timesteps; it returns ε̂ of x_t's shape (or an object whose `.sample` is it).
            A class-conditional model called with two arguments must use its unconditional (null) class.
        sigma: The smoothing noise σ the inputs carry, in [0, 1] pixel units.
        betas: The β schedule; default: `noise_model.betas`.
        num_timesteps: The schedule length noise_model was trained with; default:
            `noise_model.num_timesteps` when it has one. A different length of betas is an error.
        input_shape: Shape of one input; default: `noise_model.sample_shape` when it has one. Inputs of
            another shape are rejected before the model runs.

    Attributes:
        t_star: The timestep used.
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar: sqrt(ᾱ_t*) and sqrt(1 − ᾱ_t*) (Python floats,
            computed in float64).

    Raises:
        InvalidParameterError: No schedule, a bad schedule, a length mismatch, or sigma too large.

    Shapes:
        input: [b, *input_shape] noisy images x + δ in [0, 1] units; output: [b, *input_shape] in [0, 1].
    """

    def __init__(
        self,
        noise_model: nn.Module | Callable[..., Any],
        sigma: float,
        betas: Any = None,
        num_timesteps: int | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not callable(noise_model):
            raise InvalidParameterError(f"noise_model must be callable, got {type(noise_model).__name__}")
        self.noise_model = noise_model
        self.sigma = check_sigma(sigma)
        if betas is None:
            betas = getattr(noise_model, "betas", None)
            if betas is None:
                raise InvalidParameterError("the noise model has no `betas` attribute: pass its schedule as betas=")
        if num_timesteps is None:
            declared = getattr(noise_model, "num_timesteps", None)
            num_timesteps = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
        alpha_bar = alphas_cumprod(betas, num_timesteps)
        self.num_timesteps = int(alpha_bar.numel())
        self.t_star = select_timestep(alpha_bar, self.sigma)
        ab = float(alpha_bar[self.t_star])
        self.sqrt_alpha_bar = math.sqrt(ab)
        self.sqrt_one_minus_alpha_bar = math.sqrt(1.0 - ab)
        if input_shape is None:
            input_shape = getattr(noise_model, "sample_shape", None)
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Purify a batch of noisy inputs.

        Args:
            x: Noisy inputs x + δ, pixels in [0, 1] units.

        Returns:
            x̂0, clipped to [0, 1].

        Raises:
            InvalidInputError: x is not a floating batch of the expected shape.
            ModelOutputError: ε_θ failed, or returned a wrong type or shape.

        Shapes:
            x: [b, *input_shape] -> [b, *input_shape].
        """
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.ndim < 2:
            desc = f"shape {tuple(x.shape)} ({x.dtype})" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidInputError(f"the purifier takes a floating batch [b, *input_shape], got {desc}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InvalidInputError(
                f"the noise model takes inputs of shape {self.input_shape}, got a batch of shape {tuple(x.shape)}"
            )
        x_t = (2.0 * x - 1.0) * self.sqrt_alpha_bar
        t = torch.full((x.shape[0],), self.t_star, dtype=torch.long, device=x.device)
        try:
            eps = _noise_output(self.noise_model(x_t, t))
        except SmoothgenError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise ModelOutputError(
                f"the noise model failed on a batch of shape {tuple(x_t.shape)}: {first_line(exc)}"
            ) from exc
        if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != tuple(x_t.shape):
            got = f"shape {tuple(eps.shape)}" if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise ModelOutputError(f"the noise model must return noise of its input's shape {tuple(x_t.shape)}, got {got}")
        x0 = (x_t - self.sqrt_one_minus_alpha_bar * eps.to(x_t.dtype)) / self.sqrt_alpha_bar
        return (x0.clamp(-1.0, 1.0) + 1.0) / 2.0

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, t_star={self.t_star}, num_timesteps={self.num_timesteps}"


class DDS(nn.Module):
    """Denoised smoothing's base classifier (Carlini et al. 2023): classifier(purifier(x + δ)).

    Args:
        purifier: A `DiffusionPurifier` (or any module mapping noisy inputs to clean-looking ones).
        classifier: A classifier of clean inputs, returning logits.

    Shapes:
        input: [b, *input_shape] noisy inputs; output: [b, num_classes] logits.
    """

    def __init__(self, purifier: nn.Module | Callable, classifier: nn.Module | Callable) -> None:
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the purified inputs. Shapes: x [b, *input_shape] -> [b, num_classes]."""
        return self.classifier(self.purifier(x))


class DiffSmooth(nn.Module):
    """DiffSmooth's base classifier (Zhang et al. 2023): purify, then smooth the classifier locally.

    For each noisy input, x̂0 = purifier(x + δ), and the output is log((1/m) Σ_j softmax(classifier(x̂0 + ε'_j)))
    with m fresh local noises ε'_j ~ N(0, σ'²I): the log of the averaged probabilities, whose argmax is
    DiffSmooth's prediction. (Probabilities are clamped to the smallest positive float before the log, so
    the output stays finite; this cannot change the argmax, the largest average is ≥ 1/num_classes.)
    The b inputs × m local copies run through the classifier as one batch of b·m.

    The local noise comes from this module's own random stream, independent of the smoothing noise δ.
    With a seed, the stream is reproducible: `reseed(seed, request_id)` restarts it (the CLI does so per
    input, so that a certificate does not depend on what ran before it).

    Args:
        purifier: A `DiffusionPurifier` (or any module mapping noisy inputs to clean-looking ones).
        classifier: A classifier of clean(ish) inputs, returning logits.
        local_samples: m ≥ 1 (paper default 5).
        local_sigma: σ' > 0 (docs/theory.md: σ' ≤ σ, e.g. 0.25).
        seed: Seed of the local-noise stream (None: fresh OS entropy, not reproducible).

    Shapes:
        input: [b, *input_shape] noisy inputs; output: [b, num_classes] log-probabilities.
    """

    def __init__(
        self,
        purifier: nn.Module | Callable,
        classifier: nn.Module | Callable,
        local_samples: int = 5,
        local_sigma: float = 0.25,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier
        self.local_samples = check_count(local_samples, "local_samples")
        self.local_sigma = check_sigma(local_sigma)
        self.reseed(seed)

    def reseed(self, seed: int | None, request_id: int = 0) -> None:
        """Restart the local-noise stream from (seed, request_id); seed None draws fresh OS entropy.

        Args:
            seed: Integer in [0, 2⁶⁴) or None.
            request_id: Distinguishes inputs that share a seed (integer in [0, 2⁶⁴)).

        Raises:
            InvalidParameterError: a seed or request id outside [0, 2⁶⁴).
        """
        if seed is not None:
            seed = check_count(seed, "seed", minimum=0)
        request_id = check_count(request_id, "request_id", minimum=0)
        # The engine's fixed-width key derivation: a list [seed, request_id, tag] of variable-width entries
        # would give (s + b·2³², r) and (s, b + r·2³²) the same stream. torch seeds are non-negative int64.
        self._seed_value = RandomStream(seed, request_id).state(LOCAL_NOISE_STREAM_TAG) & 0x7FFF_FFFF_FFFF_FFFF
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed_value)
            self._generators[device] = gen
        return gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the locally averaged class probabilities. Shapes: x [b, *input_shape] -> [b, num_classes]."""
        x0 = self.purifier(x)
        b, m = x0.shape[0], self.local_samples
        # [m, b, *shape]: m noisy copies of the whole batch, made in one call on x0's device.
        local = kernels.gaussian_noise(x0, m, self.local_sigma, self._generator(x0.device))
        logits = self.classifier(local.reshape(m * b, *x0.shape[1:]))
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != m * b:
            got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelOutputError(f"the classifier must return logits [{m * b}, num_classes], got {got}")
        probs = torch.softmax(logits.float(), dim=1).reshape(m, b, -1).mean(dim=0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))

    def extra_repr(self) -> str:
        return f"local_samples={self.local_samples}, local_sigma={self.local_sigma}"


class DiffusersNoiseModel(nn.Module):
    """ε_θ(x_t, t) from a diffusers `UNet2DModel` and the β schedule of its `DDPMScheduler`.

    NOT TESTED: diffusers is an optional extra, not installed where smoothgen is tested. The wrapper only
    uses `unet(x_t, t).sample`, `scheduler.betas` and `scheduler.config.num_train_timesteps` /
    `prediction_type`; it imports nothing from diffusers itself.

    Args:
        unet: A diffusers UNet2DModel (unconditional, ε-prediction).
        scheduler: Its DDPMScheduler.

    Raises:
        InvalidParameterError: The scheduler predicts something other than ε, or has no betas.
    """

    def __init__(self, unet: nn.Module, scheduler: Any) -> None:
        super().__init__()
        config = getattr(scheduler, "config", None)
        prediction = getattr(config, "prediction_type", "epsilon")
        if prediction != "epsilon":
            raise InvalidParameterError(f"one-shot purification needs an epsilon-prediction model, got {prediction!r}")
        betas = getattr(scheduler, "betas", None)
        if betas is None:
            raise InvalidParameterError("the scheduler has no betas")
        self.unet = unet
        self.register_buffer("betas", torch.as_tensor(betas, dtype=torch.float64).clone(), persistent=False)
        declared = getattr(config, "num_train_timesteps", None)
        self.num_timesteps = int(declared) if declared is not None else int(self.betas.numel())
        unet_config = getattr(unet, "config", None)
        size = getattr(unet_config, "sample_size", None)
        channels = getattr(unet_config, "in_channels", None)
        if isinstance(size, int) and isinstance(channels, int):
            self.sample_shape = (channels, size, size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t).sample


def load_diffusers_noise_model(path: str, device: str | torch.device = "cpu") -> DiffusersNoiseModel:
    """Load a diffusers DDPM pipeline folder (unet/ + scheduler/) as a noise model. NOT TESTED (see above).

    Raises:
        ModelLoadError: diffusers is not installed, or the folder cannot be loaded.
    """
    try:
        from diffusers import DDPMScheduler, UNet2DModel  # optional extra, imported only here
    except ImportError as exc:
        raise ModelLoadError("loading a diffusers model needs the optional package diffusers (pip install diffusers)") from exc
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError ... for bad folders
        raise ModelLoadError(f"cannot load a diffusers DDPM from {path}: {first_line(exc)}") from exc
    return DiffusersNoiseModel(unet.to(device).eval(), scheduler)
