"""Benchmark: fedstore checkpoints vs pickle, np.savez and plain safetensors.

Usage::

    python benchmarks/bench_format.py                  # 100 MB float32, median of 3
    python benchmarks/bench_format.py --mb 20 --runs 5 --levels 1,3,6

The model is "trained-like" float32 weights: a handful of layer-shaped
tensors drawn from N(0, 0.05) with a fixed seed, about ``--mb`` MB in all.
Each format is timed end to end through a file in a temporary directory:
save = serialise + write, load = read + deserialise (the page cache holds the
file, so these compare serialisation work, not disk speed). Prints medians,
stored bytes and ratios against pickle, and the targets fedstore aims for
(save and load within 2x of pickle, stored bytes at most 0.86 of pickle's).
Times are shown wall-clock and as CPU time of this process (which includes
the kernel's share of file I/O); on a busy machine the CPU figures are the
steadier comparison.
``--levels`` adds rows for plain zstd levels (shuffled) to compare with
fedstore's fixed parameters. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import safetensors.numpy
import zstandard

from fedstore.format import decode, encode, pieces

MB = 1_000_000
# Layer shapes cycled until the model reaches the requested size.
SHAPES = [(4096, 1024), (1024,), (1024, 1024), (1024,), (2048, 512), (512,), (512, 256), (256,)]


@dataclass
class Result:
    name: str
    save_s: float
    load_s: float
    save_cpu: float
    load_cpu: float
    stored: int


def trained_like(total_bytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    size = i = 0
    while size < total_bytes:
        shape = SHAPES[i % len(SHAPES)]
        kind = "bias" if len(shape) == 1 else "weight"
        arr = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
        arrays[f"layer{i // 2:03d}.{kind}"] = arr
        size += arr.nbytes
        i += 1
    return arrays


def median_time(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds (this process, all threads) of *fn*."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def bench(
    name: str,
    path: Path,
    save: Callable[[Path], None],
    load: Callable[[Path], dict[str, np.ndarray]],
    arrays: dict[str, np.ndarray],
    runs: int,
) -> Result:
    save(path)  # warm-up, and the file the load timing reads
    loaded = load(path)
    assert sorted(loaded) == sorted(arrays) and all(
        np.array_equal(loaded[k], v) for k, v in arrays.items()
    ), f"{name} did not round-trip"
    save_s, save_cpu = median_time(lambda: save(path), runs)
    load_s, load_cpu = median_time(lambda: load(path), runs)
    return Result(name, save_s, load_s, save_cpu, load_cpu, path.stat().st_size)


def zstd_level_parameters(level: int) -> Callable[[], zstandard.ZstdCompressionParameters]:
    """A stand-in for zstd_frame.compression_parameters using a plain zstd level."""

    def parameters() -> zstandard.ZstdCompressionParameters:
        return zstandard.ZstdCompressionParameters.from_level(
            level, write_content_size=1, write_checksum=1, write_dict_id=0, threads=0
        )

    return parameters


def run(arrays: dict[str, np.ndarray], workdir: Path, runs: int, levels: list[int]) -> None:
    def pickle_save(p: Path) -> None:
        p.write_bytes(pickle.dumps(arrays, protocol=pickle.HIGHEST_PROTOCOL))

    def pickle_load(p: Path) -> dict[str, np.ndarray]:
        # the baseline fedstore replaces; never do this with untrusted bytes
        return pickle.loads(p.read_bytes())  # type: ignore[no-any-return]  # noqa: S301

    def npz_save(p: Path) -> None:
        with p.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    def npz_load(p: Path) -> dict[str, np.ndarray]:
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def st_save(p: Path) -> None:
        safetensors.numpy.save_file(arrays, str(p))

    def st_load(p: Path) -> dict[str, np.ndarray]:
        return safetensors.numpy.load_file(str(p))

    def fs_save(p: Path) -> None:
        p.write_bytes(encode(arrays))

    def fs_plain_save(p: Path) -> None:
        p.write_bytes(encode(arrays, shuffle=False))

    def fs_load(p: Path) -> dict[str, np.ndarray]:
        return decode(p.read_bytes()).arrays

    rows = [
        bench(
            "pickle (dumps+write / read+loads)",
            workdir / "m.pkl",
            pickle_save,
            pickle_load,
            arrays,
            runs,
        ),
        bench("np.savez (uncompressed)", workdir / "m.npz", npz_save, npz_load, arrays, runs),
        bench(
            "safetensors (uncompressed)", workdir / "m.safetensors", st_save, st_load, arrays, runs
        ),
        bench(
            "fedstore, zstd, no shuffle",
            workdir / "plain.fsck",
            fs_plain_save,
            fs_load,
            arrays,
            runs,
        ),
        bench(
            "fedstore (zstd fast + shuffle)",
            workdir / "m.fsck",
            fs_save,
            fs_load,
            arrays,
            runs,
        ),
    ]
    for level in levels:
        preset = zstd_level_parameters(level)
        # pieces caches one compressor per thread: patch its reference and use
        # a fresh thread-local so the sweep's parameters are the ones applied
        with (
            mock.patch.object(pieces, "compression_parameters", preset),
            mock.patch.object(pieces, "_local", threading.local()),
        ):
            rows.append(
                bench(
                    f"  sweep: zstd {level} + shuffle",
                    workdir / f"l{level}.fsck",
                    fs_save,
                    fs_load,
                    arrays,
                    runs,
                )
            )
    base = rows[0]
    raw = sum(a.nbytes for a in arrays.values())
    print(
        f"model: {len(arrays)} float32 tensors, {raw / MB:.1f} MB raw, N(0, 0.05); "
        f"median of {runs} runs; wall ms (cpu ms)"
    )
    header = (
        f"{'format':<34} {'save ms':>13} {'load ms':>13} {'stored MB':>9} "
        f"{'bytes/pkl':>9} {'save/pkl':>8} {'load/pkl':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        save = f"{r.save_s * 1e3:.0f} ({r.save_cpu * 1e3:.0f})"
        load = f"{r.load_s * 1e3:.0f} ({r.load_cpu * 1e3:.0f})"
        print(
            f"{r.name:<34} {save:>13} {load:>13} {r.stored / MB:>9.2f} "
            f"{r.stored / base.stored:>9.3f} {r.save_s / base.save_s:>8.2f} "
            f"{r.load_s / base.load_s:>8.2f}"
        )
    fs = rows[4]
    print()
    print(
        f"fedstore vs pickle, wall: save {fs.save_s / base.save_s:.2f}x, load "
        f"{fs.load_s / base.load_s:.2f}x; cpu: save {fs.save_cpu / base.save_cpu:.2f}x, load "
        f"{fs.load_cpu / base.load_cpu:.2f}x (target <= 2.00x each)"
    )
    print(
        f"stored: {fs.stored / base.stored:.3f} of pickle's bytes, {fs.stored / raw:.3f} of raw "
        "(target <= 0.860)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="model size in MB (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument("--levels", default="", help="comma-separated zstd levels to sweep")
    parser.add_argument("--dir", default=None, help="directory for the temporary files")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    arrays = trained_like(int(args.mb * MB))
    with tempfile.TemporaryDirectory(prefix="bench-format-", dir=args.dir) as tmp:
        run(arrays, Path(tmp), max(1, args.runs), levels)


if __name__ == "__main__":
    main()
