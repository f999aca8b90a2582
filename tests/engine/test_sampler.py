"""The Sampler seam: batching, on-device reduction, validation, reproducibility."""
import numpy as np
import pytest
import torch

from smoothgen.engine import Purpose, RandomStream, Sampler, TorchRuntime
from smoothgen.errors import InvalidParameterError, ModelOutputError


class CountCalls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        # class = sign of the first coordinate's noise
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


@pytest.mark.parametrize("n,batch", [(1, 1000), (7, 3), (1000, 1000), (1023, 100)])
def test_counts_cover_n_in_batches(n, batch):
    model = CountCalls()
    counts = Sampler(batch).counts(model, torch.zeros(2), n, 1.0, 2, RandomStream(0).generator(Purpose.SELECTION))
    assert counts.dtype == np.int64 and counts.sum() == n
    assert model.sizes == [batch] * (n // batch) + ([n % batch] if n % batch else [])


def test_runtime_max_batch_caps_the_batch():
    model = CountCalls()
    runtime = TorchRuntime(model)
    runtime.max_batch = 4
    Sampler(100).counts(runtime, torch.zeros(2), 10, 1.0, 2, RandomStream(0).generator(Purpose.SELECTION))
    assert model.sizes == [4, 4, 2]


def test_noise_statistics():
    # The votes of sign(noise) are Binomial(n, 1/2), and outputs have the requested sigma.
    gen = RandomStream(3).generator(Purpose.CENTER)
    out = Sampler(500).outputs(lambda x: x, torch.full((4,), 2.0), 20_000, 0.3, gen)
    assert out.shape == (20_000, 4)
    assert out.mean().item() == pytest.approx(2.0, abs=0.01)
    assert out.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(np.corrcoef(out[:, 0].numpy(), out[:, 1].numpy())[0, 1]) < 0.03


def test_streams_are_reproducible_and_independent():
    s = RandomStream(11, 5)
    a = torch.randn(100, generator=s.generator(Purpose.SELECTION))
    b = torch.randn(100, generator=s.generator(Purpose.SELECTION))
    c = torch.randn(100, generator=s.generator(Purpose.ESTIMATION))
    d = torch.randn(100, generator=RandomStream(11, 6).generator(Purpose.SELECTION))
    e = torch.randn(100, generator=RandomStream(12, 5).generator(Purpose.SELECTION))
    assert torch.equal(a, b)
    for other in (c, d, e):
        assert not torch.equal(a, other)
    assert not torch.equal(torch.randn(3, generator=RandomStream(None).generator(Purpose.SELECTION)),
                           torch.randn(3, generator=RandomStream(None).generator(Purpose.SELECTION)))


def test_outputs_reduce_keeps_only_n_numbers():
    gen = RandomStream(0).generator(Purpose.CENTER)
    kept = Sampler(64).outputs(lambda x: x, torch.zeros(5), 1000, 1.0, gen, reduce=lambda o: o.norm(dim=1))
    assert kept.shape == (1000,)


def test_outputs_of_sequences_are_listed():
    gen = RandomStream(0).generator(Purpose.CENTER)
    out = Sampler(4).outputs(lambda x: [[1, 2]] * x.shape[0], torch.zeros(2), 10, 1.0, gen)
    assert out == [[1, 2]] * 10


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
        Sampler(8).counts(model, torch.zeros(2), 20, 1.0, 2, RandomStream(0).generator(Purpose.SELECTION))


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
        Sampler(8).outputs(model, torch.zeros(2), 20, 1.0, RandomStream(0).generator(Purpose.CENTER))


@pytest.mark.parametrize("batch", [0, -1, 2.5, True])
def test_bad_batch_size(batch):
    with pytest.raises(InvalidParameterError):
        Sampler(batch)
