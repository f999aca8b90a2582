"""The Sampler: batching, batch-invariant noise, on-device reducers, validation."""
import numpy as np
import pytest
import torch

from smoothgen.engine import (
    ClassCounts,
    NoiseSource,
    Purpose,
    RandomStream,
    Sampler,
    ScoreSums,
    TorchRuntime,
)
from smoothgen.errors import InvalidParameterError, ModelOutputError


class CountCalls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)  # class = sign of the first coordinate


def key(seed=0, request=0, purpose=Purpose.SELECTION):
    return RandomStream(seed, request).key(purpose)


@pytest.mark.parametrize("n,batch", [(1, 1000), (7, 3), (1000, 1000), (1023, 100), (250, 64)])
def test_counts_cover_n_in_batches(n, batch):
    model = CountCalls()
    counts = Sampler(batch).counts(model, torch.zeros(2), n, 1.0, 2, key())
    assert counts.dtype == np.int64 and counts.sum() == n
    assert model.sizes == [batch] * (n // batch) + ([n % batch] if n % batch else [])


@pytest.mark.parametrize("batch", [1, 7, 64, 100, 333, 1000, 5000])
def test_noise_does_not_depend_on_the_batch_size(batch):
    """Sample i of a request gets the same noise however samples are cut into batches."""
    reference = Sampler(1000).outputs(lambda x: x, torch.arange(6.0).reshape(2, 3), 1234, 0.5, key(7, 3))
    got = Sampler(batch).outputs(lambda x: x, torch.arange(6.0).reshape(2, 3), 1234, 0.5, key(7, 3))
    assert torch.equal(reference, got)


def test_noise_source_fills_any_pieces():
    x = torch.zeros(5)
    whole = torch.empty(257, 5)
    NoiseSource(x, 1.0, 257, key(1)).fill(whole, 0)
    source = NoiseSource(x, 1.0, 257, key(1))
    pieces, start = [], 0
    for size in (3, 97, 1, 99, 57):  # pieces of every size, each continuing the counter stream
        out = torch.empty(size, 5)
        source.fill(out, start)
        pieces.append(out)
        start += size
    assert torch.equal(torch.cat(pieces), whole)
    with pytest.raises(ValueError):
        source.fill(torch.empty(2, 5), 256)


def test_cpu_noise_never_repeats_a_copy():
    """Issue 10.3: seeding a CPU generator per block of 100 copies kept 32 bits of a 63-bit seed, and
    with seed 25, request 0, CENTER_RADIUS copies 765 000–765 099 equalled copies 974 900–974 999.
    Counter-based noise gives every copy its own Philox counters: those copies differ, element by element."""
    k = key(25, 0, Purpose.CENTER_RADIUS)
    x = torch.zeros(8)
    source = NoiseSource(x, 1.0, 1_000_000, k)
    a, b = torch.empty(100, 8), torch.empty(100, 8)
    source.fill(a, 765_000)
    source.fill(b, 974_900)
    assert not bool((a == b).all(dim=1).any())
    assert not bool((a == b).any())


def test_noise_is_a_pure_function_of_key_and_copy_on_cpu():
    """The CPU noise is the counter-based noise of the kernels (copy i = counter row i), not torch.randn."""
    from smoothgen.kernels.reference import philox_normal_reference

    x = torch.zeros(2, 3)
    k = key(3, 1, Purpose.ESTIMATION)
    out = torch.empty(4, 2, 3)
    NoiseSource(x, 1.0, 10, k).fill(out, 5)
    expected = philox_normal_reference(k.key, 5, 4, 6).reshape(4, 2, 3)
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)


def test_request_identities_do_not_collide():
    """Issue 10.4: SeedSequence concatenated variable-width words, so (s + b·2³², r) and (s, b + r·2³²)
    gave the same key. Fixed-width words keep them apart; values outside [0, 2⁶⁴) are refused."""
    s, r, b = 5, 7, 3
    for purpose in Purpose:
        assert RandomStream(s + (b << 32), r).key(purpose) != RandomStream(s, b + (r << 32)).key(purpose)
    keys = {RandomStream(seed, req).key(p).key for seed in (0, 1, 1 << 32, (1 << 64) - 1) for req in (0, 1, 1 << 32) for p in Purpose}
    assert len(keys) == 4 * 3 * len(Purpose)
    for bad in (-1, 1 << 64, 1.5, True):
        with pytest.raises(InvalidParameterError):
            RandomStream(bad, 0)
        with pytest.raises(InvalidParameterError):
            RandomStream(0, bad)


def test_tagged_streams_share_the_fixed_width_derivation():
    """Streams outside the engine's purposes (a generator's sampler noise, DiffSmooth's local noise) take a
    tag in the same derivation: purposes are tags 0..5, and tags keep (seed, request id) pairs apart too."""
    stream = RandomStream(5, 7)
    for purpose in Purpose:
        assert stream.state(int(purpose)) == stream.key(purpose).key
    assert stream.state(0xC0DD1F) != stream.state(0xD1FF5) != stream.state(0)
    assert RandomStream(5 + (3 << 32), 7).state(0xC0DD1F) != RandomStream(5, 3 + (7 << 32)).state(0xC0DD1F)
    for bad in (-1, 1 << 32, 2.0, True):
        with pytest.raises(InvalidParameterError):
            stream.state(bad)


def test_noise_tv_is_the_truncation_of_every_pair():
    from smoothgen.engine import noise_tv

    assert noise_tv(0) == 0.0
    assert noise_tv(1) >= 2.0**-64 and noise_tv(2) == noise_tv(1)
    assert noise_tv(3 * 224 * 224) >= 75_264 * 2.0**-64
    assert noise_tv(3 * 224 * 224) < 75_265 * 2.0**-64
    # The sampler's radius per pair never exceeds the truncation radius sqrt(130 ln 2) (u1 >= 2^-65).
    out = torch.empty(2000, 64)
    NoiseSource(torch.zeros(64), 1.0, 2000, key(11)).fill(out, 0)
    pairs = out.reshape(-1, 2)
    assert float(pairs.norm(dim=1).max()) <= (130 * np.log(2)) ** 0.5 + 1e-4


def test_runtime_max_batch_caps_the_batch():
    model = CountCalls()
    runtime = TorchRuntime(model)
    runtime.max_batch = 4
    Sampler(100).counts(runtime, torch.zeros(2), 10, 1.0, 2, key())
    assert model.sizes == [4, 4, 2]


def test_noise_statistics():
    out = Sampler(500).outputs(lambda x: x, torch.full((4,), 2.0), 20_000, 0.3, key(3, purpose=Purpose.CENTER))
    assert out.shape == (20_000, 4)
    assert out.mean().item() == pytest.approx(2.0, abs=0.01)
    assert out.std().item() == pytest.approx(0.3, rel=0.02)
    flat = (out - 2.0).reshape(-1).numpy()
    from scipy.stats import kstest

    assert kstest(flat / 0.3, "norm").pvalue > 1e-3
    # No correlation between coordinates, between neighbouring samples, or across block boundaries.
    assert abs(np.corrcoef(out[:, 0].numpy(), out[:, 1].numpy())[0, 1]) < 0.03
    assert abs(np.corrcoef(out[:-1, 0].numpy(), out[1:, 0].numpy())[0, 1]) < 0.03
    blocks = out[: 100 * (20_000 // 100)].reshape(-1, 100, 4)
    assert abs(np.corrcoef(blocks[:-1, :, 0].reshape(-1).numpy(), blocks[1:, :, 0].reshape(-1).numpy())[0, 1]) < 0.03


def test_streams_are_reproducible_and_independent():
    s = RandomStream(11, 5)
    assert s.key(Purpose.SELECTION) == RandomStream(11, 5).key(Purpose.SELECTION)
    keys = {s.key(Purpose.SELECTION), s.key(Purpose.ESTIMATION), RandomStream(11, 6).key(Purpose.SELECTION),
            RandomStream(12, 5).key(Purpose.SELECTION)}
    assert len(keys) == 4
    assert RandomStream(None).key(Purpose.SELECTION) != RandomStream(None).key(Purpose.SELECTION)
    a = torch.randn(100, generator=s.generator(Purpose.SELECTION))
    assert torch.equal(a, torch.randn(100, generator=s.generator(Purpose.SELECTION)))
    x = torch.zeros(3)
    outs = [Sampler(64).outputs(lambda v: v, x, 200, 1.0, k) for k in keys]
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.equal(outs[i], outs[j])


def test_outputs_reduce_keeps_only_n_numbers():
    kept = Sampler(64).outputs(lambda x: x, torch.zeros(5), 1000, 1.0, key(), reduce=lambda o: o.norm(dim=1))
    assert kept.shape == (1000,)


def test_identity_model_outputs_are_not_overwritten_by_the_next_batch():
    out = Sampler(10).outputs(lambda x: x, torch.zeros(2), 30, 1.0, key())
    assert torch.unique(out, dim=0).shape[0] == 30


def test_outputs_of_sequences_are_listed():
    out = Sampler(4).outputs(lambda x: [[1, 2]] * x.shape[0], torch.zeros(2), 10, 1.0, key())
    assert out == [[1, 2]] * 10


def test_score_sums():
    # scores = 1[x_0 > 0]: its mean estimates Φ(x_0/σ).
    sums, squares, count = Sampler(128).score_sums(lambda x: (x[:, 0] > 0).double(), torch.zeros(2), 4000, 1.0, key())
    assert count == 4000 and sums == squares
    assert sums / count == pytest.approx(0.5, abs=0.03)
    sums, squares, count = Sampler(128).score_sums(lambda x: torch.softmax(x, dim=1), torch.zeros(3), 500, 1.0, key())
    assert sums.shape == (3,) and sums.sum() == pytest.approx(500)
    with pytest.raises(ModelOutputError):
        Sampler(128).score_sums(lambda x: x[:, 0] * 10, torch.zeros(2), 100, 1.0, key())


def test_class_counts_reducer_directly():
    reducer = ClassCounts(3)
    reducer.add(torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), 2)
    assert reducer.result().tolist() == [1, 1, 0]
    bad = ScoreSums()
    bad.add(torch.tensor([0.5, float("nan")]), 2)
    with pytest.raises(ModelOutputError):
        bad.result()


@pytest.mark.parametrize(
    "model",
    [
        lambda x: torch.zeros(x.shape[0], 3),
        lambda x: torch.zeros(x.shape[0], 2, dtype=torch.int32),
        lambda x: torch.where(x[:, :1] > 10, 0.0, float("nan")).expand(-1, 2),
        lambda x: None,
    ],
)
def test_counts_reject_garbage(model):
    with pytest.raises(ModelOutputError):
        Sampler(8).counts(model, torch.zeros(2), 20, 1.0, 2, key())


@pytest.mark.parametrize(
    "model",
    [
        lambda x: torch.zeros(x.shape[0] + 1, 2),
        lambda x: torch.zeros(x.shape[0], x.shape[0]),  # shape changes with the batch
        lambda x: [0] * (x.shape[0] - 1),
        lambda x: torch.tensor(1.0),
        lambda x: torch.full((x.shape[0], 2), float("inf")),
    ],
)
def test_outputs_reject_garbage(model):
    with pytest.raises(ModelOutputError):
        Sampler(8).outputs(model, torch.zeros(2), 20, 1.0, key())


@pytest.mark.parametrize("batch", [0, -1, 2.5, True])
def test_bad_batch_size(batch):
    with pytest.raises(InvalidParameterError):
        Sampler(batch)


def _peak_rss_mib(n: int) -> float:
    import subprocess
    import sys

    code = (
        "import resource, sys, torch\n"
        "from smoothgen.engine import Purpose, RandomStream, Sampler\n"
        "model = lambda x: torch.stack([-x[:, 0], x[:, 0]], dim=1)\n"
        "key = RandomStream(0).key(Purpose.SELECTION)\n"
        "counts = Sampler(10_000).counts(model, torch.zeros(64), int(sys.argv[1]), 1.0, 2, key)\n"
        "assert counts.sum() == int(sys.argv[1])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.slow
def test_constant_memory_for_a_million_samples():
    """n = 10⁶ noisy copies of a 64-dim input (256 MiB if they were all held) run in the memory of n = 10⁴."""
    small, large = _peak_rss_mib(10_000), _peak_rss_mib(1_000_000)
    assert large - small < 40, f"peak RSS grew from {small:.0f} MiB to {large:.0f} MiB"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the fused Triton noise path)")
@pytest.mark.parametrize("batch", [7, 100, 1000])
def test_cuda_noise_is_batch_invariant_and_gaussian(batch):
    x = torch.arange(6.0, device="cuda").reshape(2, 3)
    reference = Sampler(4096).outputs(lambda v: v, x, 5000, 0.5, key(7, 3))
    got = Sampler(batch).outputs(lambda v: v, x, 5000, 0.5, key(7, 3))
    assert got.is_cuda and torch.equal(reference, got)
    noise = (got - x) / 0.5
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1.0) < 0.02
