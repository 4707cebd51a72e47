"""Section ``format``: checkpoint save and load against pickle, np.savez and safetensors.

The model is :func:`~fedstore.bench.common.trained_like` float32 weights.
Each variant goes through a file in the work directory: save = serialise +
write, load = read + deserialise (no fsync; the page cache holds the file, so
this compares serialisation work, not disk speed). Every variant is checked
to round-trip once before it is timed; then the variants take turns, run
after run, so a drift in the machine's speed hits them alike. Ratios are
against pickle as the original design used it (``pickle.dumps`` written with
``write_bytes``, ``read_bytes`` then ``pickle.loads``); pickle streaming
straight to and from the file object is shown too. fedstore is timed through
its file functions (:func:`~fedstore.format.codec.encode_to` on the open
file, :func:`~fedstore.format.codec.decode_file`) and, for reference, through
bytes. Targets: fedstore's stored bytes at most 0.84 of pickle's, save within
1.2x and load within 1.0x of pickle's time.

pickle appears here as the baseline only, on bytes this benchmark wrote
itself a moment earlier. No fedstore code path that reads peer data ever
unpickles.
"""

from __future__ import annotations

import functools
import pickle  # noqa: S403  (baseline of the benchmark only, see the module docstring)
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedstore.bench.common import (
    MB,
    BenchSizes,
    Row,
    SayFn,
    SectionResult,
    Target,
    median_time,
    trained_like,
)

NAME = "format"
TITLE = "Checkpoint save/load"

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class _Figures:
    save: tuple[float, list[float]]  # median, samples
    load: tuple[float, list[float]]
    stored: int


@dataclass(frozen=True)
class _Variant:
    name: str
    suffix: str
    save: Callable[[Path, Arrays], None]
    load: Callable[[Path], Arrays]


def _pickle_save(path: Path, arrays: Arrays) -> None:
    path.write_bytes(pickle.dumps(arrays, protocol=pickle.HIGHEST_PROTOCOL))


def _pickle_load(path: Path) -> Arrays:
    # The baseline fedstore replaces: bytes this benchmark just wrote, never peer data.
    return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]  # noqa: S301


def _pickle_dump(path: Path, arrays: Arrays) -> None:
    with path.open("wb") as fh:
        pickle.dump(arrays, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _pickle_load_file(path: Path) -> Arrays:
    with path.open("rb") as fh:  # as above: this benchmark's own file
        return pickle.load(fh)  # type: ignore[no-any-return]  # noqa: S301


def _npz_save(path: Path, arrays: Arrays) -> None:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def _npz_load(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _st_save(path: Path, arrays: Arrays) -> None:
    import safetensors.numpy

    safetensors.numpy.save_file(arrays, str(path))


def _st_load(path: Path) -> Arrays:
    import safetensors.numpy

    return safetensors.numpy.load_file(str(path))


def _fs_save(path: Path, arrays: Arrays) -> None:
    from fedstore.format.codec import encode_to

    with path.open("wb") as fh:
        encode_to(fh, arrays)


def _fs_load(path: Path) -> Arrays:
    from fedstore.format.codec import decode_file

    return decode_file(path).arrays


def _fs_save_bytes(path: Path, arrays: Arrays) -> None:
    from fedstore.format import encode

    path.write_bytes(encode(arrays))


def _fs_load_bytes(path: Path) -> Arrays:
    from fedstore.format import decode

    return decode(path.read_bytes()).arrays


VARIANTS = [
    _Variant("pickle", ".pkl", _pickle_save, _pickle_load),
    _Variant("pickle, file object", ".pkl2", _pickle_dump, _pickle_load_file),
    _Variant("np.savez", ".npz", _npz_save, _npz_load),
    _Variant("safetensors", ".safetensors", _st_save, _st_load),
    _Variant("fedstore", ".fsck", _fs_save, _fs_load),
    _Variant("fedstore, via bytes", ".fsck2", _fs_save_bytes, _fs_load_bytes),
]
BASELINE = "pickle"
TARGETED = "fedstore"

SAVE_TARGET = Target("<=", 1.2)
LOAD_TARGET = Target("<=", 1.0)
BYTES_TARGET = Target("<=", 0.84)


def describe(sizes: BenchSizes) -> str:
    return f"{sizes.model_mb:g} MB float32 model, median of {sizes.format_runs}"


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    """Measure every variant; rows for save time, load time and stored bytes."""
    say("building the model")
    arrays = trained_like(int(sizes.model_mb * MB))
    raw = sum(int(a.nbytes) for a in arrays.values())
    result = SectionResult(
        NAME,
        TITLE,
        params={
            "model_bytes": raw,
            "tensors": len(arrays),
            "dtype": "float32",
            "init": "N(0, 0.05)",
            "runs": sizes.format_runs,
        },
    )
    figures = _measure(arrays, workdir, sizes.format_runs, say)

    base = figures[BASELINE]
    model = f"{raw / MB:.0f} MB model"
    for action, target in (("save", SAVE_TARGET), ("load", LOAD_TARGET)):
        base_median: float = getattr(base, action)[0]
        for variant in VARIANTS:
            median, samples = getattr(figures[variant.name], action)
            is_base = variant.name == BASELINE
            result.add(
                Row(
                    f"{action} {model}",
                    variant.name,
                    median,
                    "s",
                    "time",
                    baseline=None if is_base else BASELINE,
                    ratio=None if is_base else median / base_median,
                    target=target if variant.name == TARGETED else None,
                    samples=samples,
                )
            )
    for variant in VARIANTS:
        fig = figures[variant.name]
        is_base = variant.name == BASELINE
        result.add(
            Row(
                "bytes stored",
                variant.name,
                fig.stored / MB,
                "MB",
                "bytes",
                baseline=None if is_base else BASELINE,
                ratio=None if is_base else fig.stored / base.stored,
                target=BYTES_TARGET if variant.name == TARGETED else None,
                note=f"{fig.stored / raw:.3f} of raw tensor bytes",
            )
        )
    result.notes.append(
        f"{len(arrays)} float32 tensors, {raw / MB:.1f} MB raw, N(0, 0.05); files in the "
        "page cache, no fsync; pickle is the baseline (the original design's format)"
    )
    return result


def _measure(arrays: Arrays, workdir: Path, runs: int, say: SayFn) -> dict[str, _Figures]:
    """Check each variant's round trip, then time them in turns (median of *runs* each)."""
    paths = {v.name: workdir / f"model{v.suffix}" for v in VARIANTS}
    for variant in VARIANTS:
        say(f"{variant.name}: round trip")
        variant.save(paths[variant.name], arrays)
        _check_round_trip(variant.name, variant.load(paths[variant.name]), arrays)
    saves: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    loads: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for run in range(max(1, runs)):
        say(f"run {run + 1}/{runs}: save and load, each variant in turn")
        for variant in VARIANTS:
            path = paths[variant.name]
            saves[variant.name] += median_time(functools.partial(variant.save, path, arrays), 1)[1]
            loads[variant.name] += median_time(functools.partial(variant.load, path), 1)[1]
    figures = {}
    for variant in VARIANTS:
        path = paths[variant.name]
        save, load = saves[variant.name], loads[variant.name]
        figures[variant.name] = _Figures(
            (statistics.median(save), save), (statistics.median(load), load), path.stat().st_size
        )
        path.unlink()
    return figures


def _check_round_trip(name: str, loaded: Arrays, arrays: Arrays) -> None:
    if sorted(loaded) != sorted(arrays) or not all(
        np.array_equal(loaded[k], v) for k, v in arrays.items()
    ):
        raise RuntimeError(f"{name} did not round-trip the model")
