"""Federated training of a PyTorch MLP on handwritten digits: a fedstore app to copy.

The model is an ordinary ``torch.nn.Module``; fedstore exchanges its
``state_dict`` as numpy arrays (``fedstore.torch_state`` converts both
ways). The data is scikit-learn's digits (it ships inside scikit-learn, no
download); trainer ``i`` of ``N`` trains on every ``N``-th training example
from the ``i``-th on. Run it from the repository root::

    fedstore simulate --app examples/pytorch_mlp/app.py:app --trainers 2 \\
        --export digits_mlp.safetensors
    python examples/pytorch_mlp/predict.py digits_mlp.safetensors

Needs PyTorch (CPU is enough) and scikit-learn: ``pip install 'fedstore[demo]'``
and the CPU wheel of torch (see this directory's README).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

import numpy as np
import numpy.typing as npt
import torch
from sklearn.datasets import load_digits
from torch import nn

from fedstore.app import App, TrainerContext, TrainFn
from fedstore.torch_state import arrays_from_state_dict, load_arrays_into

Arrays = Mapping[str, npt.NDArray[np.generic]]
torch.set_num_threads(1)  # several trainer processes share the machine's cores


class Net(nn.Module):
    """64 pixels -> 64 hidden units (ReLU) -> 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


@cache
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): standardised, a fixed 25 % held out."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[: len(y) // 4], order[len(y) // 4 :]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    as_x, as_y = torch.from_numpy, lambda a: torch.from_numpy(a.astype(np.int64))
    return as_x(x[train]), as_y(y[train]), as_x(x[test]), as_y(y[test])


def initial() -> dict[str, npt.NDArray[np.generic]]:
    """The untrained model's weights (seeded, so every run starts the same)."""
    torch.manual_seed(0)
    return arrays_from_state_dict(Net().state_dict())


def trainer(context: TrainerContext) -> TrainFn:
    x_all, y_all, _, _ = data()
    x, y = x_all[context.index - 1 :: context.count], y_all[context.index - 1 :: context.count]

    def train(
        arrays: Arrays, round: int, config: Mapping[str, str | int | float]
    ) -> tuple[dict[str, npt.NDArray[np.generic]], int, dict[str, float]]:
        model = Net()
        load_arrays_into(model, arrays)
        opt = torch.optim.SGD(model.parameters(), lr=float(config.get("lr", 0.05)), momentum=0.9)
        gen = torch.Generator().manual_seed(1000 * round + context.index)
        model.train()
        losses = []
        for _ in range(int(config.get("epochs", 2))):
            for batch in torch.randperm(len(y), generator=gen).split(32):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                loss.backward()
                opt.step()
                losses.append(loss.item())
        metrics = {"train_loss": float(np.mean(losses[-len(losses) // 2 :]))}
        return arrays_from_state_dict(model.state_dict()), len(y), metrics

    return train


def evaluate(arrays: Arrays) -> dict[str, float]:
    """Accuracy and cross-entropy of a global model on the held-out digits."""
    _, _, x, y = data()
    model = Net()
    load_arrays_into(model, arrays)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return {
        "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        "loss": float(nn.functional.cross_entropy(logits, y)),
    }


app = App(
    initial=initial,
    trainer=trainer,
    evaluate=evaluate,
    strategy="fedavg",
    rounds=5,
    quorum=2,
    targets={"accuracy": 0.95},
)
