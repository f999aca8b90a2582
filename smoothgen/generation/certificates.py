"""What certified generation returns: `GenerationCertificate` (per-step radii, the certified prefix, the
record) and `DistributionBound` (docs/theory.md §4c, §4g, §4j)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from smoothgen.errors import InvalidParameterError
from smoothgen.generation.noise import EmbeddingGaussian, TokenAblation
from smoothgen.generation.substitutions import _substitution_items, substitution_radius
from smoothgen.validate import check_count, check_positive


def _check_radius(radius: float | None, name: str = "radius") -> float:
    return 0.0 if radius is None else check_positive(radius, name, allow_zero=True)


@dataclass(frozen=True)
class GenerationCertificate:
    """Certified prefix of smoothed greedy decoding (docs/theory.md §4c).

    Holds with probability ≥ 1 − alpha over the sampling: for every k and every perturbation Δ of the
    perturbed prompt rows with ‖Δ‖_F < prefix_radius(k), the smoothed greedy decoder produces
    ``tokens[:k]`` on the perturbed prompt. Step radii are certified with a strict inequality (as in
    Cohen et al.): a step with L_t ≤ 1/2 has R_t = 0 and certifies nothing, not even at radius 0.

    Attributes:
        prompt: the prompt's token ids.
        tokens: the generated tokens (chosen by the n0 selection copies; with n0 = 0 by the base model's own
            greedy decoding of the clean prompt).
        certified_prefix: the prefix length certified at `radius` (`prefix_at(radius)`).
        radius: the radius that was asked for (0.0 when none was).
        step_radius: R_t per step.
        p_lower: L_t, the lower confidence bound on p̄_t of the chosen token (level alpha_step).
        p_mean, p_variance: the estimation copies' mean and unbiased variance of that token's score.
        p_selection: the chosen token's mean score (probability or vote share) among the selection copies
            (n0 = 0: its score on the clean prompt; token deletion: copies that each keep the mean number of
            perturbed tokens, `TokenDeletion.selection_kept`).
        mask: which prompt positions carry noise (and may be perturbed).
        alpha_step: alpha / max_new_tokens (Bonferroni over the steps).
        bound: the confidence bound ("best": the larger of empirical Bernstein and Hoeffding, each at
            alpha_step / 2; "bernstein"; "hoeffding"; "clopper-pearson" for votes; "betting" for votes
            estimated sequentially: the lower end of each step's betting confidence sequence).
        sequential, max_samples, check_every: whether the estimation stopped once the prefix at `radius` was
            decided (then `n` is the number of estimation copies drawn, at most `max_samples`, checked every
            `check_every` copies; None when not sequential).
        first_check: the sequential estimation's looks: "earliest" (one more, first, at the fewest copies
            that could certify the radius, `stats.betting_first_decision`, when fewer than check_every) or
            "check_every" (every check_every copies only, as before that choice existed); None when not
            sequential.
        selection: how token deletion's n0 selection copies were drawn ("equal-length": each kept the mean
            number of perturbed tokens; "noise": independent deletions, like the estimation copies); None for
            other noise and for n0 = 0.
        stopped: why decoding stopped: "max_new_tokens" or "eos".
        noise_tv: τ, the per-copy total variation between the sampled prompt noise and N(0, σ²I)
            (token ablation: the chance of a tie between the random words that pick the kept subset);
            every L_t is the bound under the sampler minus τ (smoothgen.engine.noise).
        noise: "gaussian" (σ; radii in embedding distance), "ablation" (keep k of the perturbed
            positions; sigma is None and `step_radius[t]` is the number r of substituted tokens step t
            is certified against, −1 for none: L_t > 1/2 + Δ_r) or "deletion" (each perturbed token
            deleted with probability `delete_prob`; `step_radius[t]` is the number r of inserted, deleted
            or substituted tokens in the perturbed run step t is certified against: L_t > 3/2 − p^r).
        keep: k of token ablation (None otherwise).
        delete_prob: p of token deletion (None otherwise).
        score: "probability" (p̄_t is the mean softmax) or "vote" (the share of copies whose argmax is
            the token; bound "clopper-pearson").
    """

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]
    certified_prefix: int
    radius: float
    step_radius: tuple[float, ...]
    p_lower: tuple[float, ...]
    p_mean: tuple[float, ...]
    p_variance: tuple[float, ...]
    p_selection: tuple[float, ...]
    sigma: float | None
    n0: int
    n: int
    alpha: float
    alpha_step: float
    bound: str
    max_new_tokens: int
    mask: tuple[bool, ...]
    seed: int | None
    request_id: int
    stopped: str
    noise_tv: float = 0.0
    noise: str = "gaussian"
    keep: int | None = None
    score: str = "probability"
    delete_prob: float | None = None
    sequential: bool = False
    max_samples: int | None = None
    check_every: int | None = None
    first_check: str | None = None
    selection: str | None = None

    @property
    def token_noise(self) -> bool:
        """Whether the radii count edited tokens (ablation, deletion) rather than embedding distance."""
        return self.noise in ("ablation", "deletion")

    def prefix_radius(self, k: int) -> float:
        """The radius below which the first k tokens are certified: min_{t<k} R_t (inf for k = 0)."""
        k = check_count(k, "k", minimum=0)
        if k > len(self.tokens):
            raise InvalidParameterError(f"k = {k} exceeds the {len(self.tokens)} generated tokens")
        return min(self.step_radius[:k], default=math.inf)

    def prefix_at(self, radius: float) -> int:
        """The largest k whose steps all cover `radius`: Gaussian noise, R_t > radius (tokens certified
        against ‖Δ‖_F ≤ radius); token ablation, r_t ≥ radius (against any `radius` substituted tokens);
        token deletion, r_t ≥ radius (against any `radius` inserted, deleted or substituted tokens)."""
        radius = _check_radius(radius)
        covers = TokenAblation.covers if self.token_noise else EmbeddingGaussian.covers
        k = 0
        while k < len(self.step_radius) and covers(self.step_radius[k], radius):
            k += 1
        return k

    def prefix_under_substitutions(self, table: torch.Tensor, substitutions: Any) -> int:
        """The prefix certified against a set of token substitutions in the prompt (0 if any position is
        unperturbed): by their embedding distance under Gaussian noise, by their number under ablation."""
        subs = _substitution_items(substitutions, len(self.prompt))
        if not all(self.mask[p] for p in subs):
            return 0
        if self.token_noise:
            changed = sum(1 for p, tok in subs.items() if tok != self.prompt[p])
            return self.prefix_at(changed)
        return self.prefix_at(substitution_radius(table, self.prompt, substitutions))

    @property
    def certified_tokens(self) -> tuple[int, ...]:
        return self.tokens[: self.certified_prefix]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable record (tuples become lists; inf radii stay floats)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    to_record = to_dict


@dataclass(frozen=True)
class DistributionBound:
    """Sample-free bound on how far the output distribution of ONE noisy generation can move (§4a).

    For every ‖Δ‖_F ≤ radius on the perturbed rows: TV(P_x, P_x') ≤ tv, W1 ≤ w1 and W2 ≤ w2 under any
    output metric of diameter `diameter` (Levenshtein on ≤ max_new_tokens generated tokens: diameter
    max_new_tokens), and P_x'(S) ≥ Φ(Φ⁻¹(P_x(S)) − radius/σ) for every event S
    (`stats.event_probability_bound`). Valid because the prompt reaches the output only through
    emb + ε with fixed σ and decoding uses no randomness correlated with ε. It says nothing about an
    aggregate of many noisy runs (`generate`, `center_certify` certify those).
    """

    radius: float
    sigma: float
    tv: float
    diameter: float | None
    w1: float | None
    w2: float | None
    noise_tv: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    to_record = to_dict
