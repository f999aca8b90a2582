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

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from smoothgen import stats
from smoothgen.center import CenterSmoother
from smoothgen.certificates import CenterCertificate, ClassificationCertificate
from smoothgen.classify import SmoothedClassifier
from smoothgen.engine import Purpose, RandomStream, Sampler, as_runtime, noise_tv
from smoothgen.engine.reducers import describe
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.models.ddpm import DigitsDDPM
from smoothgen.validate import check_alpha, check_count, check_input, check_positive, check_sigma
from smoothgen.generators import (  # noqa: F401 - importable from here as before
    ConditionalGenerator,
    DiffusersGenerator,
    DiffusionGenerator,
    GENERATION_STREAM_TAG,
    _is_a,
)
from smoothgen.mean_smoothing import (  # noqa: F401 - importable from here as before
    DEFAULT_GENERATION_BATCH,
    MeanCertificate,
    MeanSmoother,
)


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
