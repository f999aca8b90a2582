"""Small analytic models whose smoothed behaviour is known in closed form: the tests' oracles."""
import torch


class LinearBinary(torch.nn.Module):
    """f(x) = [w·x + b > 0] as two logits. Its smoothed version has pA = Φ(|w·x+b| / (σ‖w‖)) and exact
    robust radius |w·x+b| / ‖w‖ (Cohen et al. 2019), the oracle of the classification tests."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w.flatten().double())
        self.b = float(b)

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).double() @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.margin(x)
        return torch.stack([-s, s], dim=1).float()

    def exact_radius(self, x: torch.Tensor) -> float:
        return float(self.margin(x[None]).abs()[0] / self.w.norm())


class Linear(torch.nn.Module):
    """f(x) = A x: the oracle of the center-smoothing tests."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.a.T



class Constant(torch.nn.Module):
    """A classifier that always answers `cls` (all n votes agree: the largest radius n can certify)."""

    def __init__(self, cls: int, num_classes: int = 10):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes)
        logits[:, self.cls] = 1.0
        return logits


class Recorder(torch.nn.Module):
    """Records every noisy input it sees, then answers class 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return Constant(0, 2)(x)


class WrongWidth(torch.nn.Module):
    """A 'classifier' that returns 3 logits for some inputs and 4 for others: garbage."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 3 if x.shape[0] == 1 else 4)


def wrong_width_factory():
    return WrongWidth()


def not_a_module_factory():
    return "not a model"
