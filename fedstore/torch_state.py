"""PyTorch state dicts <-> the numpy arrays fedstore exchanges (PyTorch stays optional).

Apps exchange models as dicts of named numpy arrays. A PyTorch app converts
at its edges::

    from fedstore.torch_state import arrays_from_state_dict, load_arrays_into

    def train(arrays, round, config):
        model = Net()
        load_arrays_into(model, arrays)   # = model.load_state_dict(state_dict_from_arrays(...))
        ...                               # train on local data
        return arrays_from_state_dict(model.state_dict()), len(data), {"train_loss": loss}

Names are the ``state_dict`` keys, so a model fedstore saved (``fedstore
checkpoint load --out model.safetensors``, or ``--export model.safetensors``
of ``fedstore aggregate``/``simulate``) loads straight back into PyTorch::

    from safetensors.torch import load_file
    model.load_state_dict(load_file("model.safetensors"))

fedstore does not depend on PyTorch: these functions import it when called
and raise :class:`~fedstore.errors.ConfigError` (with the install command)
when it is missing. ``bfloat16`` tensors, which numpy cannot hold, become
float32 arrays; :func:`state_dict_from_arrays` with ``like`` casts them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedstore.errors import ConfigError

__all__ = [
    "INSTALL_HINT",
    "TorchTensor",
    "arrays_from_state_dict",
    "load_arrays_into",
    "state_dict_from_arrays",
]

NDArray = npt.NDArray[np.generic]
#: How to install the CPU build of PyTorch (the default wheel pulls ~3 GB of CUDA libraries).
INSTALL_HINT = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


class TorchTensor(Protocol):
    """The part of ``torch.Tensor`` the converters use (fedstore does not import torch)."""

    @property
    def device(self) -> object: ...

    @property
    def dtype(self) -> object: ...

    def detach(self) -> TorchTensor: ...

    def cpu(self) -> TorchTensor: ...

    def numpy(self) -> NDArray: ...

    def to(self, *, device: object, dtype: object) -> TorchTensor: ...


def _torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"PyTorch is not installed: {INSTALL_HINT}") from exc
    mod: ModuleType = torch
    return mod


def arrays_from_state_dict(state_dict: Mapping[str, TorchTensor]) -> dict[str, NDArray]:
    """A PyTorch ``state_dict`` as numpy arrays: detached, on the CPU, contiguous copies.

    Tensors of a dtype numpy lacks (``bfloat16``) become float32.
    """
    torch = _torch()
    out: dict[str, NDArray] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        if t.dtype == getattr(torch, "bfloat16", None):
            t = t.to(device="cpu", dtype=torch.float32)
        out[name] = np.array(t.numpy(), copy=True, order="C")
    return out


def state_dict_from_arrays(
    arrays: Mapping[str, NDArray], like: Mapping[str, TorchTensor] | None = None
) -> dict[str, TorchTensor]:
    """Numpy arrays as a ``state_dict`` of tensors (each a copy, writable).

    With ``like`` (usually ``model.state_dict()``), each tensor takes the
    device and dtype of the same-named tensor there.
    """
    torch = _torch()
    out: dict[str, TorchTensor] = {}
    for name, arr in arrays.items():
        t: TorchTensor = torch.from_numpy(np.array(arr, copy=True))
        if like is not None and name in like:
            t = t.to(device=like[name].device, dtype=like[name].dtype)
        out[name] = t
    return out


def load_arrays_into(model: Any, arrays: Mapping[str, NDArray], *, strict: bool = True) -> None:
    """``model.load_state_dict`` from numpy arrays, matching the model's devices and dtypes.

    ``strict`` as in PyTorch: every key of the model must be there, and no other.
    """
    model.load_state_dict(state_dict_from_arrays(arrays, model.state_dict()), strict=strict)
