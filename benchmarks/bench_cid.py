"""Benchmark: fedstore CID hashing vs ``sha256sum`` on the same file, and peak memory.

Usage::

    python benchmarks/bench_cid.py                 # 256 MiB file, median of 3, RSS on 1 GiB
    python benchmarks/bench_cid.py --size-mib 64 --repeat 5 --rss-gib 0

The file is written once and read once before timing so every run reads from
the page cache; the figures compare hashing work, not disk speed. Peak RSS is
measured in a fresh subprocess (``resource.getrusage(...).ru_maxrss``) hashing a
sparse file, next to the same subprocess that only imports fedstore (on Linux
the child's VmHWM, since ru_maxrss keeps the forking parent's figure across exec).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from fedstore.cid import DagParams, cid_of_file

MIB = 1024 * 1024

# Prints "<ru_maxrss KiB> <VmHWM KiB or -1>". On Linux ru_maxrss survives execve
# (it starts at the forking parent's RSS), so VmHWM, reset by exec, is the
# truthful figure there; ru_maxrss is the portable fallback.
_RSS_SCRIPT = """
import resource, sys
from fedstore.cid import DagParams, cid_of_file
if sys.argv[1] != "-":
    cid_of_file(sys.argv[1], params=DagParams.profile(sys.argv[2], int(sys.argv[3])))
hwm = -1
try:
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
"""


def _make_file(directory: str | None, size: int) -> str:
    fd, path = tempfile.mkstemp(prefix="bench-cid-", suffix=".bin", dir=directory)
    with os.fdopen(fd, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    with open(path, "rb") as f:  # warm the page cache
        while f.read(8 * MIB):
            pass
    return path


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _plain_hashlib(path: str) -> None:
    h = hashlib.sha256()
    buf = bytearray(MIB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])


def _sha256sum(path: str) -> None:
    subprocess.run(["sha256sum", path], check=True, stdout=subprocess.DEVNULL)


def _peak_rss_kib(path: str, profile: str, version: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, path, profile, str(version)],
        check=True,
        capture_output=True,
        text=True,
    )
    maxrss, hwm = (int(v) for v in out.stdout.split())
    return hwm if hwm >= 0 else maxrss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256, help="test file size (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (median taken)")
    ap.add_argument("--dir", default=None, help="directory for the temporary files")
    ap.add_argument(
        "--rss-gib", type=float, default=1.0, help="size of the peak-RSS file; 0 to skip"
    )
    args = ap.parse_args(argv)
    if shutil.which("sha256sum") is None:
        print("sha256sum not found on PATH", file=sys.stderr)
        return 1

    size = args.size_mib * MIB
    path = _make_file(args.dir, size)
    variants: dict[str, Callable[[], object]] = {
        "sha256sum": lambda: _sha256sum(path),
        "plain hashlib.sha256": lambda: _plain_hashlib(path),
        "cid v0 (kubo)": lambda: cid_of_file(path, 0),
        "cid v1 (kubo)": lambda: cid_of_file(path, 1),
        "cid v1 (unixfs-v1-2025)": lambda: cid_of_file(path, params=DagParams.unixfs_v1_2025()),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.repeat):  # interleaved, so drift hits every variant alike
            for name, fn in variants.items():
                times[name].append(_timed(fn))
    finally:
        os.unlink(path)

    base = statistics.median(times["sha256sum"])
    print(f"hashing a {args.size_mib} MiB file (page-cached), median of {args.repeat}")
    print(f"{'variant':<26}{'median s':>10}{'MB/s':>10}{'vs sha256sum':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<26}{med:>10.3f}{size / med / 1e6:>10.0f}{base / med:>14.2f}")

    if args.rss_gib > 0:
        rss_size = int(args.rss_gib * 1024 * MIB)
        fd, sparse = tempfile.mkstemp(prefix="bench-cid-rss-", dir=args.dir)
        try:
            os.ftruncate(fd, rss_size)
            os.close(fd)
            baseline = _peak_rss_kib("-", "kubo", 0)
            print(
                f"\npeak RSS hashing a {args.rss_gib:g} GiB file in a subprocess "
                "(VmHWM, else ru_maxrss)"
            )
            print(f"{'imports only':<26}{baseline / 1024:>10.1f} MiB")
            for label, profile, version in (
                ("cid v0 (kubo)", "kubo", 0),
                ("cid v1 (unixfs-v1-2025)", "unixfs-v1-2025", 1),
            ):
                peak = _peak_rss_kib(sparse, profile, version)
                print(f"{label:<26}{peak / 1024:>10.1f} MiB (+{(peak - baseline) / 1024:.1f})")
        finally:
            os.unlink(sparse)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
