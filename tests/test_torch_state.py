"""fedstore.torch_state with real PyTorch: state dicts <-> numpy arrays, and files torch loads.

Needs PyTorch: ``tox -e torch`` (part of ``bash scripts/test.sh``) installs
the CPU build and runs every test marked ``torch``; elsewhere they are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed; 'tox -e torch' (run by scripts/test.sh) runs these"
)
from safetensors.torch import load_file  # noqa: E402  (needs torch)
from torch import nn  # noqa: E402

from fedstore.federation import api  # noqa: E402
from fedstore.format.weight_files import save_weights_file  # noqa: E402
from fedstore.torch_state import (  # noqa: E402
    arrays_from_state_dict,
    load_arrays_into,
    state_dict_from_arrays,
)

pytestmark = pytest.mark.torch


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def test_round_trip_is_exact_including_integer_buffers() -> None:
    model = _net()
    sd = model.state_dict()
    arrays = arrays_from_state_dict(sd)
    assert list(arrays) == list(sd)  # the state_dict's names and order
    assert arrays["1.num_batches_tracked"].dtype == np.int64
    for name, tensor in sd.items():
        assert arrays[name].dtype == tensor.numpy().dtype
        assert np.array_equal(arrays[name], tensor.numpy())
        assert arrays[name].flags.c_contiguous and arrays[name].flags.writeable
    back = state_dict_from_arrays(arrays, sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # the api module re-exports the same functions
    assert api.arrays_from_state_dict is arrays_from_state_dict


def test_arrays_are_copies_both_ways() -> None:
    model = _net()
    arrays = arrays_from_state_dict(model.state_dict())
    arrays["3.bias"][:] = 42.0
    assert not torch.any(model.state_dict()["3.bias"] == 42.0)
    sd = state_dict_from_arrays(arrays)
    arrays["3.bias"][:] = 0.0
    assert torch.all(sd["3.bias"] == 42.0)


def test_like_sets_dtypes_and_bfloat16_travels_as_float32() -> None:
    model = nn.Linear(4, 2).to(torch.bfloat16)
    arrays = arrays_from_state_dict(model.state_dict())
    assert arrays["weight"].dtype == np.float32  # numpy has no bfloat16
    back = state_dict_from_arrays(arrays, model.state_dict())
    assert back["weight"].dtype == torch.bfloat16
    assert torch.equal(back["weight"], model.state_dict()["weight"])
    half = nn.Linear(4, 2).half()
    assert state_dict_from_arrays(arrays, half.state_dict())["bias"].dtype == torch.float16
    assert state_dict_from_arrays(arrays)["bias"].dtype == torch.float32  # without like


def test_non_contiguous_tensors_and_load_arrays_into() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # a transposed view
    arrays = arrays_from_state_dict({"w": t})
    assert arrays["w"].flags.c_contiguous and np.array_equal(arrays["w"], t.numpy())
    target, source = _net(), _net()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    load_arrays_into(target, arrays_from_state_dict(source.state_dict()))
    assert all(
        torch.equal(a, b)
        for a, b in zip(target.state_dict().values(), source.state_dict().values(), strict=True)
    )
    with pytest.raises(RuntimeError, match="Missing key"):
        load_arrays_into(target, {"3.bias": np.zeros(3, np.float32)})


def test_a_saved_file_loads_with_safetensors_torch(tmp_path: Path) -> None:
    model = _net()
    path = tmp_path / "model.safetensors"
    save_weights_file(path, arrays_from_state_dict(model.state_dict()), metadata={"round": "3"})
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))
    fresh.load_state_dict(load_file(str(path)))
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
