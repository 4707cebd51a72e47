"""Section ``cid``: CID of a file against ``sha256sum`` on it, and peak memory of hashing.

A file of random bytes is written and read once before timing, so every run
reads from the page cache: the figures compare hashing work, not the disk.
Variants run interleaved (one run of each, repeated), so drift on a shared
machine hits them alike. Throughput ratios are against ``sha256sum`` (higher
is better; target: fedstore's CIDv0 at least 0.7 of it).

Peak memory: a fresh subprocess computes the CID of a sparse file of
``rss_mib`` MiB and reports its ``VmHWM`` from ``/proc/self/status``, next to
the same subprocess that only imports fedstore; the difference is what
hashing costs, and it must not grow with the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fedstore.bench.common import MB, MIB, BenchSizes, Row, SayFn, SectionResult, Target

NAME = "cid"
TITLE = "CID hashing"

THROUGHPUT_TARGET = Target(">=", 0.7)

# Prints "<VmHWM KiB or -1> <ru_maxrss KiB>". On Linux ru_maxrss survives
# execve (it starts at the forking parent's RSS); VmHWM is reset by exec.
_RSS_SCRIPT = """
import resource, sys
from fedstore.ipld.cid import cid_of_file
if sys.argv[1] != "-":
    cid_of_file(sys.argv[1], 0)
hwm = -1
try:
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def describe(sizes: BenchSizes) -> str:
    return (
        f"{sizes.cid_mib} MiB file vs sha256sum, median of {sizes.cid_runs}; "
        f"peak memory on {sizes.rss_mib} MiB"
    )


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MIB)
            fh.write(os.urandom(n))
            left -= n
    with path.open("rb") as fh:  # warm the page cache
        while fh.read(8 * MIB):
            pass


def _sha256sum(path: Path) -> None:
    subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)


def _hashlib(path: Path) -> None:
    h = hashlib.sha256()
    buf = bytearray(MIB)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])


def peak_rss_kib(path: Path | None) -> int:
    """Peak resident memory (KiB) of a fresh interpreter hashing *path* (None: imports only)."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, "-" if path is None else str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    hwm, maxrss = (int(v) for v in out.stdout.split())
    return hwm if hwm >= 0 else maxrss


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    from fedstore.ipld.cid import cid_of_file

    if shutil.which("sha256sum") is None:
        raise RuntimeError("sha256sum is not on PATH (coreutils); it is this section's baseline")
    size = sizes.cid_mib * MIB
    result = SectionResult(
        NAME,
        TITLE,
        params={"file_bytes": size, "runs": sizes.cid_runs, "rss_file_bytes": sizes.rss_mib * MIB},
    )
    path = workdir / "random.bin"
    say(f"writing {sizes.cid_mib} MiB of random bytes")
    _write_random(path, size)
    variants: dict[str, Callable[[], object]] = {
        "sha256sum": lambda: _sha256sum(path),
        "hashlib.sha256": lambda: _hashlib(path),
        "fedstore CIDv0": lambda: cid_of_file(path, 0),
        "fedstore CIDv1": lambda: cid_of_file(path, 1),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(max(1, sizes.cid_runs)):
        for name, fn in variants.items():
            say(f"run {i + 1}/{sizes.cid_runs}: {name}")
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    path.unlink()
    base = size / statistics.median(times["sha256sum"]) / MB
    for name, samples in times.items():
        mbps = size / statistics.median(samples) / MB
        is_base = name == "sha256sum"
        result.add(
            Row(
                f"hash {sizes.cid_mib} MiB file",
                name,
                mbps,
                "MB/s",
                "throughput",
                baseline=None if is_base else "sha256sum",
                ratio=None if is_base else mbps / base,
                target=THROUGHPUT_TARGET if name == "fedstore CIDv0" else None,
                note=f"median {statistics.median(samples):.3f} s",
                samples=samples,
            )
        )

    say(f"peak memory: hashing a {sizes.rss_mib} MiB sparse file in a subprocess")
    sparse = workdir / "sparse.bin"
    with sparse.open("wb") as fh:
        fh.truncate(sizes.rss_mib * MIB)
    try:
        imports = peak_rss_kib(None)
        hashing = peak_rss_kib(sparse)
    finally:
        sparse.unlink()
    result.add(
        Row(
            f"peak memory, {sizes.rss_mib} MiB file",
            "python + fedstore imports",
            imports / 1024,
            "MiB",
            "memory",
            note="VmHWM of a subprocess that only imports fedstore.ipld.cid",
        )
    )
    result.add(
        Row(
            f"peak memory, {sizes.rss_mib} MiB file",
            "fedstore CIDv0",
            hashing / 1024,
            "MiB",
            "memory",
            baseline="python + fedstore imports",
            ratio=hashing / imports,
            note=f"+{(hashing - imports) / 1024:.1f} MiB for hashing "
            f"({(hashing - imports) / 1024 / sizes.rss_mib:.2%} of the file)",
        )
    )
    result.notes.append(
        "page-cached random file; variants interleaved; ratio = throughput / sha256sum's; "
        "peak memory is the subprocess's VmHWM"
    )
    return result
