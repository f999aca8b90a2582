"""SmoothedClassifier against analytic oracles (docs/theory.md §1)."""
import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from smoothgen import ABSTAIN, SmoothedClassifier
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen import stats
from smoothgen.engine import Purpose, RandomStream

from oracles import Constant, LinearBinary, Recorder


def test_linear_oracle_false_certification_rate_at_most_alpha():
    """The certified radius may exceed the exact radius |w·x+b|/‖w‖ in at most about an alpha fraction of runs.

    Fails for any certificate built on a point estimate of pA, on reused selection votes, or on a
    two-sided bound at the wrong level.
    """
    model = LinearBinary(torch.tensor([1.0, 2.0, -2.0]), 0.3)
    x = torch.tensor([0.2, 0.1, -0.1])
    exact = model.exact_radius(x)
    sigma, alpha, n0, n, runs = 0.5, 0.1, 50, 500, 400
    smoothed = SmoothedClassifier(model, 2, sigma, batch_size=500)
    exceed = 0
    certified = 0
    for seed in range(runs):
        cert = smoothed.certify(x, n0, n, alpha, seed=seed)
        certified += not cert.abstained
        exceed += (not cert.abstained) and cert.radius > exact
    assert certified > runs // 2  # the test has power: most runs certify something
    assert binom.sf(exceed - 1, runs, alpha) > 1e-3, f"{exceed}/{runs} radii exceed the exact radius"


def test_linear_oracle_radius_close_when_pa_moderate():
    model = LinearBinary(torch.tensor([0.6, 0.8]), 0.0)
    x = torch.tensor([0.5, 0.0])  # margin 0.3, so with sigma = 0.25 pA = Φ(1.2) ≈ 0.885
    sigma = 0.25
    exact = model.exact_radius(x)
    cert = SmoothedClassifier(model, 2, sigma, batch_size=20_000).certify(x, 100, 100_000, 0.001, seed=0)
    assert cert.prediction == 1
    assert cert.radius <= exact
    assert cert.radius == pytest.approx(exact, rel=0.03)
    assert cert.p_lower == pytest.approx(norm.cdf(1.2), abs=0.006)


def test_all_votes_agree_gives_max_radius_exactly():
    sigma, n, alpha = 0.5, 2_000, 0.001
    cert = SmoothedClassifier(Constant(3), 10, sigma).certify(torch.zeros(4), 10, n, alpha, seed=1)
    assert cert.prediction == 3 and cert.count == n
    assert cert.radius == pytest.approx(sigma * norm.ppf(alpha ** (1 / n)), rel=1e-12)
    assert cert.radius == pytest.approx(stats.max_certifiable_radius(sigma, n, alpha), rel=1e-12)


def test_selection_and_estimation_samples_are_disjoint():
    recorder = Recorder()
    SmoothedClassifier(recorder, 2, 0.5, batch_size=64).certify(torch.zeros(3), 100, 300, 0.01, seed=7)
    rows = torch.cat(recorder.seen)
    assert rows.shape == (400, 3)
    assert torch.unique(rows, dim=0).shape[0] == 400  # no noisy copy was used twice


def test_abstains_on_a_coin_flip():
    # pA = 1/2 exactly: the lower bound cannot exceed 1/2.
    model = LinearBinary(torch.tensor([1.0]), 0.0)
    cert = SmoothedClassifier(model, 2, 1.0).certify(torch.zeros(1), 100, 1000, 0.001, seed=0)
    assert cert.abstained and cert.prediction == ABSTAIN and cert.radius == 0.0


def test_predict_and_abstention(linear_binary):
    smoothed = SmoothedClassifier(linear_binary, 2, 0.25)
    pred = smoothed.predict(torch.tensor([1.0, 0.0]), 1000, 0.001, seed=0)
    assert pred.prediction == 1 and pred.pvalue < 1e-10
    coin = SmoothedClassifier(LinearBinary(torch.tensor([1.0]), 0.0), 2, 1.0)
    abstentions = sum(coin.predict(torch.zeros(1), 200, 0.05, seed=s).abstained for s in range(100))
    assert abstentions >= 80  # PREDICT returns a class on a coin flip in at most ~alpha of runs


def test_same_seed_same_certificate_and_seeds_differ(linear_binary):
    smoothed = SmoothedClassifier(linear_binary, 2, 1.0, batch_size=333)
    x = torch.tensor([0.1, 0.05])
    a = smoothed.certify(x, 100, 1000, 0.01, seed=5)
    b = smoothed.certify(x, 100, 1000, 0.01, seed=5)
    c = smoothed.certify(x, 100, 1000, 0.01, seed=6)
    d = smoothed.certify(x, 100, 1000, 0.01, seed=5, request_id=1)
    assert a == b
    assert a.count != c.count or a.count != d.count


def test_digits_classifier_certifies_most_test_images():
    from smoothgen.models import load_classifier, load_digits_split

    split = load_digits_split()
    smoothed = SmoothedClassifier(load_classifier(0.25), 10, 0.25, input_shape=(1, 8, 8))
    certs = [smoothed.certify(torch.from_numpy(split.x_test[i]), 100, 1000, 0.001, seed=0, request_id=i) for i in range(20)]
    correct = sum(c.prediction == int(split.y_test[i]) for i, c in enumerate(certs))
    assert correct >= 17


@pytest.mark.parametrize(
    "kwargs",
    [dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=float("nan")), dict(num_classes=1), dict(batch_size=0)],
)
def test_bad_construction(kwargs, linear_binary):
    args = dict(base=linear_binary, num_classes=2, sigma=0.5) | kwargs
    with pytest.raises(InvalidParameterError):
        SmoothedClassifier(**args)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.certify(torch.zeros(2), 100, 1000, 0.0),
        lambda s: s.certify(torch.zeros(2), 100, 1000, 1.0),
        lambda s: s.certify(torch.zeros(2), 0, 1000, 0.01),
        lambda s: s.certify(torch.zeros(2), 100, 0, 0.01),
        lambda s: s.predict(torch.zeros(2), 0, 0.01),
        lambda s: s.certify(torch.zeros(2), 100, 10.5, 0.01),
    ],
)
def test_bad_parameters(call, linear_binary):
    with pytest.raises(InvalidParameterError):
        call(SmoothedClassifier(linear_binary, 2, 0.5, input_shape=(2,)))


@pytest.mark.parametrize(
    "x",
    [torch.tensor([float("nan"), 0.0]), torch.tensor([float("inf"), 0.0]), torch.zeros(3), torch.zeros(2, dtype=torch.int64), np.zeros(2)],
)
def test_bad_inputs(x, linear_binary):
    with pytest.raises(InvalidInputError):
        SmoothedClassifier(linear_binary, 2, 0.5, input_shape=(2,)).certify(x, 10, 10, 0.1)


@pytest.mark.parametrize(
    "forward",
    [
        lambda x: torch.zeros(x.shape[0], 3),  # wrong number of classes
        lambda x: torch.zeros(x.shape[0] + 1, 2),  # wrong batch
        lambda x: torch.full((x.shape[0], 2), float("nan")),
        lambda x: torch.zeros(x.shape[0], 2, dtype=torch.int64),
        lambda x: [0] * x.shape[0],
    ],
)
def test_garbage_model_outputs(forward):
    with pytest.raises(ModelOutputError):
        SmoothedClassifier(forward, 2, 0.5).certify(torch.zeros(2), 10, 10, 0.1, seed=0)


# ---------------------------------------------------------------- sequential certification (docs/theory.md §6)
def test_certify_at_false_certification_rate_at_most_alpha():
    """At a radius above the exact one the answer 'certified' is wrong: it may come in at most ~alpha of runs."""
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    x = torch.tensor([0.25, 0.0])  # exact radius 0.25; sigma 0.5 -> pA = Φ(0.5) ≈ 0.69
    smoothed = SmoothedClassifier(model, 2, 0.5, batch_size=1000)
    runs, alpha = 300, 0.2
    wrong = sum(smoothed.certify_at(x, 0.26, alpha, n0=20, looks=(50, 200, 1000), seed=s).certified for s in range(runs))
    assert binom.sf(wrong - 1, runs, alpha) > 1e-3, f"{wrong}/{runs} wrong certifications"
    # ... and the test has power below the exact radius.
    right = sum(smoothed.certify_at(x, 0.1, alpha, n0=20, looks=(50, 200, 1000), seed=s).certified for s in range(50))
    assert right >= 40


def test_certify_at_pointwise_bound_would_be_caught():
    """Sanity of the oracle above: a look that used the point estimate certifies wrongly far too often."""
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    x = torch.tensor([0.25, 0.0])
    smoothed = SmoothedClassifier(model, 2, 0.5, batch_size=1000)
    threshold = norm.cdf(0.26 / 0.5)
    wrong = sum(smoothed.certify_at(x, 0.26, 0.2, n0=20, looks=(50,), seed=s).count / 50 > threshold for s in range(300))
    assert binom.sf(wrong - 1, 300, 0.2) < 1e-3


def test_certify_at_stops_early():
    easy = SmoothedClassifier(Constant(3), 10, 0.5)
    cert = easy.certify_at(torch.zeros(4), 0.5, 0.001, n0=10, seed=0)
    assert cert.certified and cert.decision == "certified" and cert.prediction == 3 and cert.samples == 100
    assert cert.certified_radius >= 0.5 and cert.to_record()["looks"] == [100, 1_000, 10_000, 100_000]
    # A radius no sample size can reach at pA = Φ(0.5) ≈ 0.69 is rejected at the first look.
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    hopeless = SmoothedClassifier(model, 2, 0.5).certify_at(torch.tensor([0.25, 0.0]), 1.0, 0.001, seed=0)
    assert hopeless.decision == "rejected" and hopeless.samples == 100 and hopeless.prediction == ABSTAIN


def test_certify_at_continues_one_stream():
    """Looks extend one estimation sample: its final count equals one draw of looks[-1] samples."""
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    x = torch.tensor([0.05, 0.0])
    smoothed = SmoothedClassifier(model, 2, 0.5, batch_size=64)
    cert = smoothed.certify_at(x, 0.2, 0.001, n0=50, looks=(100, 300, 1000), seed=4)
    assert cert.decision in ("rejected", "undecided")
    full = smoothed.sampler.counts(model, x, cert.samples, 0.5, 2, RandomStream(4, 0).key(Purpose.ESTIMATION))
    assert cert.count == int(full[cert.selected])


def test_certify_abstains_early_with_the_same_answer():
    # Ten equally likely classes (the argmax of the noise itself): ĉA gets about 10% of the votes, so
    # after 60 000 of 100 000 samples even 40 000 more votes could not lift its bound above 1/2.
    uniform = SmoothedClassifier(lambda z: z, 10, 1.0)
    early = uniform.certify(torch.zeros(10), 100, 100_000, 0.001, seed=0)
    assert early.abstained and early.samples == 60_000 and early.radius == 0.0
    # A coin flip can never stop early (ĉA keeps half the votes), and abstains after all n.
    coin = SmoothedClassifier(LinearBinary(torch.tensor([1.0]), 0.0), 2, 1.0)
    assert coin.certify(torch.zeros(1), 100, 20_000, 0.001, seed=0).samples == 20_000
    confident = SmoothedClassifier(Constant(1, 2), 2, 0.5).certify(torch.zeros(1), 10, 30_000, 0.001, seed=0)
    assert not confident.abstained and confident.samples == 30_000 and confident.count == 30_000


@pytest.mark.parametrize(
    "kwargs", [dict(radius=0.0), dict(radius=-1.0), dict(alpha=0.0), dict(looks=()), dict(looks=(100, 50)), dict(n0=0)]
)
def test_certify_at_bad_parameters(kwargs, linear_binary):
    args = dict(x=torch.zeros(2), radius=0.5, alpha=0.01) | kwargs
    with pytest.raises(InvalidParameterError):
        SmoothedClassifier(linear_binary, 2, 0.5).certify_at(**args)


def test_certify_at_with_many_looks_keeps_alpha():
    """Ten looks at a radius just above the exact one: without the alpha/K split (Bonferroni) about 35% of
    runs certify wrongly at alpha = 0.1; with it, at most ~alpha may."""
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    x = torch.tensor([0.25, 0.0])
    smoothed = SmoothedClassifier(model, 2, 0.5, batch_size=4096)
    looks = tuple(25 * 2**k for k in range(10))
    runs, alpha = 300, 0.1
    wrong = sum(smoothed.certify_at(x, 0.2501, alpha, n0=20, looks=looks, seed=s).certified for s in range(runs))
    assert binom.sf(wrong - 1, runs, alpha) > 1e-3, f"{wrong}/{runs} wrong certifications"


# ---------------------------------------------------------------------------------- the default runtime


def test_a_plain_module_runs_on_the_verified_auto_runtime_by_default(monkeypatch):
    """Issue 25 item 3: `SmoothedClassifier(module)` used to run eagerly (1.1x Cohen et al.'s reference);
    now the first input builds the auto runtime (ONNX Runtime on this CPU, verified against eager on noisy
    copies of that input), and the certificate is the eager one's."""
    pytest.importorskip("onnxruntime")
    from smoothgen.engine.runtime import TorchRuntime
    from smoothgen.models import load_classifier, load_digits_split

    monkeypatch.delenv("SMOOTHGEN_BACKEND", raising=False)
    model, x = load_classifier(0.25), torch.from_numpy(load_digits_split().x_test[0])
    default = SmoothedClassifier(model, 10, 0.25, batch_size=500)
    assert default.backend == "auto" and isinstance(default.runtime, TorchRuntime)  # chosen at the first input
    cert = default.certify(x, 100, 2000, 0.001, seed=0)
    assert default.runtime.backend != "eager" and default.runtime is default.runtime  # built once
    eager = SmoothedClassifier(model, 10, 0.25, batch_size=500, backend="eager")
    assert eager.runtime.backend == "eager"
    reference = eager.certify(x, 100, 2000, 0.001, seed=0)
    assert cert.prediction == reference.prediction and cert.radius == pytest.approx(reference.radius, abs=0.02)
    # The environment names the default; an explicit backend wins; a bad one is refused.
    monkeypatch.setenv("SMOOTHGEN_BACKEND", "eager")
    assert SmoothedClassifier(model, 10, 0.25).backend == "eager"
    assert SmoothedClassifier(model, 10, 0.25, backend="auto").backend == "auto"
    with pytest.raises(InvalidParameterError, match="backend must be one of"):
        SmoothedClassifier(model, 10, 0.25, backend="fast")
    monkeypatch.setenv("SMOOTHGEN_BACKEND", "fast")
    with pytest.raises(InvalidParameterError, match=r"\$SMOOTHGEN_BACKEND must be one of"):
        SmoothedClassifier(model, 10, 0.25)
    monkeypatch.setenv("SMOOTHGEN_BACKEND", "")  # set but empty: the default
    assert SmoothedClassifier(model, 10, 0.25).backend == "auto"


def test_the_auto_default_still_explains_an_input_the_model_does_not_take(monkeypatch):
    """A wrong-shaped first input cannot build a runtime: it is explained as under eager (the shape the
    model takes), and a right-shaped input afterwards builds the auto runtime."""
    from smoothgen.models import load_classifier, load_digits_split

    monkeypatch.delenv("SMOOTHGEN_BACKEND", raising=False)
    smoothed = SmoothedClassifier(load_classifier(0.25), 10, 0.25, batch_size=200)
    with pytest.raises(InvalidInputError, match=r"takes inputs of shape"):
        smoothed.certify(torch.zeros(64), 10, 20, 0.01, seed=0)
    smoothed.certify(torch.from_numpy(load_digits_split().x_test[0]), 10, 200, 0.01, seed=0)
    assert smoothed.runtime.backend in ("onnxruntime", "compile", "eager")


def test_a_module_that_draws_its_own_noise_runs_as_it_is(monkeypatch):
    """A randomized base (DiffSmooth draws local noise; it has `reseed`) cannot be checked against eager:
    the auto default leaves it eager instead of exporting and compiling it to find that out."""
    monkeypatch.delenv("SMOOTHGEN_BACKEND", raising=False)

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def reseed(self, seed, request_id=0) -> None:
            torch.manual_seed(0 if seed is None else seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x + torch.randn_like(x))

    smoothed = SmoothedClassifier(Noisy(), 3, 0.5, batch_size=64)
    smoothed.certify(torch.zeros(4), 10, 50, 0.01, seed=0)
    assert smoothed.runtime.backend == "eager"
