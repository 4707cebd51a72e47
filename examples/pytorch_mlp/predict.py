"""Load a model fedstore exported and use it in plain PyTorch.

    python examples/pytorch_mlp/predict.py digits_mlp.safetensors

The file is an ordinary safetensors file whose names are the model's
``state_dict`` keys, so ``safetensors.torch.load_file`` and
``load_state_dict`` are all it takes; fedstore is not needed here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import Net, data  # noqa: E402  (the example's model and data)


def main(path: str) -> float:
    model = Net()
    model.load_state_dict(load_file(path))
    model.eval()
    _, _, x, y = data()
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    print(f"{path}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/pytorch_mlp/predict.py MODEL.safetensors")
    main(sys.argv[1])
