"""fedstore.format.weight_files: .npz / .safetensors / .fsck, refusing pickles and bad files."""

from __future__ import annotations

import pathlib
import pickle
import zipfile
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from fedstore.errors import FormatError, SizeLimitError
from fedstore.format import decode, encode
from fedstore.format.weight_files import load_weights_file, save_weights_file


class Evil:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "dense.w": rng.standard_normal((8, 4)).astype(np.float32),
        "dense.b": rng.standard_normal(4),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False, True]),
        "half": np.arange(5, dtype=np.float16),
        "scalar": np.array(3, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.int32),
    }


def assert_same(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert sorted(expected) == sorted(got)
    for name, arr in expected.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        assert np.array_equal(got[name], arr), name


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".fsck"])
def test_round_trip(tmp_path: pathlib.Path, suffix: str) -> None:
    arrays = sample_arrays()
    path = tmp_path / f"model{suffix}"
    save_weights_file(path, arrays)
    loaded = load_weights_file(path)
    assert_same(arrays, loaded)
    for arr in loaded.values():
        arr[...] = 0  # writable, owned copies
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_non_contiguous_and_big_endian_arrays_are_saved_correctly(tmp_path: pathlib.Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {"t": base.T, "s": base[:, ::2], "be": base.astype(">f4")}
    for suffix in (".npz", ".safetensors", ".fsck"):
        path = tmp_path / f"m{suffix}"
        save_weights_file(path, arrays)
        loaded = load_weights_file(path)
        for name, arr in arrays.items():
            assert np.array_equal(loaded[name], arr), (suffix, name)


def test_checkpoint_metadata_and_detection_by_magic(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.fsck"
    save_weights_file(path, {"w": np.ones(3)}, metadata={"round": "2"})
    assert decode(path.read_bytes()).metadata == {"round": "2"}
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(path.read_bytes())
    assert load_weights_file(renamed)["w"].tolist() == [1.0, 1.0, 1.0]


def test_safetensors_metadata_is_written(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.safetensors"
    save_weights_file(path, {"w": np.ones(2)}, metadata={"round": "1"})
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        assert fh.metadata() == {"round": "1"}


def test_npz_is_reproducible_and_handles_clashing_names(tmp_path: pathlib.Path) -> None:
    arrays = {"file": np.ones(2), "allow_pickle": np.zeros(2), "x": np.arange(3)}
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    save_weights_file(first, arrays)
    save_weights_file(second, arrays)
    assert first.read_bytes() == second.read_bytes()
    assert_same(arrays, load_weights_file(first))
    with np.load(first, allow_pickle=False) as npz:  # a normal .npz for numpy too
        assert sorted(npz.files) == sorted(arrays)


def test_unknown_extensions(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00" * 32)
    with pytest.raises(FormatError, match=r"unsupported weights file extension '\.pt'"):
        load_weights_file(path)
    with pytest.raises(FormatError, match="cannot save"):
        save_weights_file(tmp_path / "model.pkl", {"w": np.ones(1)})
    assert not (tmp_path / "model.pkl").exists()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".fsck", ".pt"])
def test_pickle_disguised_as_weights_is_refused(tmp_path: pathlib.Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": Evil(marker)}, protocol=4)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(control)))  # noqa: S301 - the payload is live
    assert control.exists()
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(payload)
    with pytest.raises(FormatError):
        load_weights_file(path)
    assert not marker.exists()


def test_npz_with_pickled_object_array_is_refused(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = Evil(marker)
    np.savez(path, w=np.ones(2), evil=evil)  # numpy pickles the object array
    with pytest.raises(FormatError, match="object"):
        load_weights_file(path)
    assert not marker.exists()


def test_npy_member_pickle_passes_header_check_but_np_load_refuses(
    tmp_path: pathlib.Path,
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", pickle.dumps(Evil(marker)))
    with pytest.raises(FormatError):
        load_weights_file(path)
    assert not marker.exists()


def test_corrupt_files(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.npz"
    save_weights_file(good, sample_arrays())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FormatError):
        load_weights_file(truncated)
    with zipfile.ZipFile(tmp_path / "extra.npz", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FormatError, match="unexpected member"):
        load_weights_file(tmp_path / "extra.npz")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="not a valid .safetensors"):
        load_weights_file(empty)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(FormatError):
        load_weights_file(bad_st)
    bad_ck = tmp_path / "bad.fsck"
    bad_ck.write_bytes(encode({"w": np.ones(4)})[:-3])
    with pytest.raises(FormatError, match="bad.fsck.*truncated"):
        load_weights_file(bad_ck)
    not_zip = tmp_path / "text.npz"
    not_zip.write_bytes(b"hello world, not a zip")
    with pytest.raises(FormatError, match="not a .npz"):
        load_weights_file(not_zip)


def test_missing_file_raises_os_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_weights_file(tmp_path / "nope.npz")


def test_safetensors_dtype_numpy_cannot_hold_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bf16.safetensors"
    header = b'{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    with pytest.raises(FormatError):
        load_weights_file(path)


def test_size_cap_checked_before_loading(tmp_path: pathlib.Path) -> None:
    arrays = {"w": np.zeros(1000, np.float64)}
    for suffix in (".npz", ".safetensors", ".fsck"):
        path = tmp_path / f"m{suffix}"
        save_weights_file(path, arrays)
        assert load_weights_file(path, max_bytes=9000)["w"].shape == (1000,)
    for suffix in (".npz", ".safetensors", ".fsck"):
        with pytest.raises(SizeLimitError):
            load_weights_file(tmp_path / f"m{suffix}", max_bytes=7000)


def test_npz_header_declaring_a_huge_array_is_refused_without_allocating(
    tmp_path: pathlib.Path,
) -> None:
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header = header.ljust(118) + "\n"
    member = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", member + b"\x00" * 64)
    with pytest.raises(SizeLimitError):
        load_weights_file(path)


def test_save_rejects_unsupported_arrays(tmp_path: pathlib.Path) -> None:
    for suffix in (".npz", ".safetensors", ".fsck"):
        path = tmp_path / f"m{suffix}"
        with pytest.raises(TypeError, match="object"):
            save_weights_file(path, {"w": np.array([{"a": 1}], dtype=object)})
        with pytest.raises(ValueError, match="NUL"):
            save_weights_file(path, {"a\x00": np.ones(1)})
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="metadata"):
        save_weights_file(tmp_path / "m.npz", {"w": np.ones(1)}, metadata={"a": "b"})


def test_safetensors_written_by_the_library_loads(tmp_path: pathlib.Path) -> None:
    arrays = sample_arrays()
    path = tmp_path / "lib.safetensors"
    safetensors.numpy.save_file(arrays, str(path))
    assert_same(arrays, load_weights_file(path))
