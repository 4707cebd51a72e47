"""Section ``catchup``: an offline peer fetches, verifies and loads the latest checkpoint.

A trained-like model of ``catchup_mb`` MB is encoded and stored through the
``filesystem`` backend (the embedded default, standing in for IPFS). The
peer coming back then, per timed run:

1. fetches the CID through :meth:`BackendChain.fetch_to_file`, which hashes
   every byte against the CID while writing a temporary file and renames it
   into place only if it matches (fetch + verify);
2. reads the file and decodes it with :func:`fedstore.format.decode_file` (load).

The baseline is the least any safe catch-up must do with the same file:
read it and hash it with SHA-256. The ratio says what the content
addressing, atomic write and decoding cost on top; target: at most 3x.
"""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path

import numpy as np

from fedstore.backends.base import StorageBackend
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

NAME = "catchup"
TITLE = "Offline peer catch-up"

CATCHUP_TARGET = Target("<=", 3.0)


def describe(sizes: BenchSizes) -> str:
    return (
        f"{sizes.catchup_mb:g} MB checkpoint via the filesystem backend, "
        f"median of {sizes.catchup_runs}"
    )


def _read_and_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    import trio

    from fedstore.backends import BackendChain, load_backend
    from fedstore.format import decode_file, encode

    say("encoding and storing the checkpoint")
    arrays = trained_like(int(sizes.catchup_mb * MB), seed=1)
    data = encode(arrays, {"round": "42", "model": "bench"})
    # through the registry, as a node would (the core never imports a plugin)
    backend = load_backend("filesystem", {"FEDSTORE_FS_ROOT": str(workdir / "fsroot")})
    chain = BackendChain([backend])
    cid = trio.run(_add, backend, data)
    del data
    dest = workdir / "peer" / "latest.fsck"
    same_bytes = workdir / "peer" / "baseline.fsck"  # a verified copy the baseline reads
    dest.parent.mkdir()

    def fetch() -> None:
        dest.unlink(missing_ok=True)
        trio.run(chain.fetch_to_file, cid, dest)

    def load() -> dict[str, np.ndarray]:
        return decode_file(dest).arrays

    def catch_up() -> None:
        fetch()
        load()

    say("checking the round trip")
    fetch()
    loaded = load()
    if sorted(loaded) != sorted(arrays) or not all(
        np.array_equal(loaded[k], v) for k, v in arrays.items()
    ):
        raise RuntimeError("the fetched checkpoint does not decode to the stored model")
    del loaded
    dest.rename(same_bytes)
    runs = sizes.catchup_runs
    # in turns, run after run, so a drift in the machine's speed hits all alike
    samples: list[list[float]] = [[], [], [], []]
    steps = (lambda: _read_and_hash(same_bytes), catch_up, fetch, load)
    for run in range(max(1, runs)):
        say(f"run {run + 1}/{runs}: read + sha256, catch-up, fetch alone, load alone")
        for sink, step in zip(samples, steps, strict=True):
            sink += median_time(step, 1)[1]
    base, total, fetched, loaded_t = ((statistics.median(s), s) for s in samples)

    size = same_bytes.stat().st_size
    result = SectionResult(
        NAME,
        TITLE,
        params={
            "model_bytes": sum(int(a.nbytes) for a in arrays.values()),
            "stored_bytes": size,
            "cid": cid,
            "backend": "filesystem",
            "runs": runs,
        },
    )
    measure = f"catch up on a {sizes.catchup_mb:g} MB checkpoint"
    baseline = "read + sha256"
    result.add(
        Row(measure, baseline, base[0], "s", "time", note="same file, 1 MiB reads", samples=base[1])
    )
    result.add(
        Row(
            measure,
            "fedstore fetch + verify + load",
            total[0],
            "s",
            "time",
            baseline=baseline,
            ratio=total[0] / base[0],
            target=CATCHUP_TARGET,
            note=f"{size / MB / total[0]:.0f} MB/s of stored checkpoint",
            samples=total[1],
        )
    )
    result.add(
        Row(
            measure,
            "  of which fetch + verify",
            fetched[0],
            "s",
            "time",
            baseline=baseline,
            ratio=fetched[0] / base[0],
            note="BackendChain.fetch_to_file (CID check, fsync, rename)",
            samples=fetched[1],
        )
    )
    result.add(
        Row(
            measure,
            "  of which load",
            loaded_t[0],
            "s",
            "time",
            baseline=baseline,
            ratio=loaded_t[0] / base[0],
            note="fedstore.format.decode_file",
            samples=loaded_t[1],
        )
    )
    result.notes.append(
        f"{size / MB:.1f} MB stored ({size / result.params['model_bytes']:.3f} of raw); "
        "page-cached files; the fetch fsyncs its output, the baseline writes nothing"
    )
    return result


async def _add(backend: StorageBackend, data: bytes) -> str:
    stored = await backend.add(data)
    return stored.cid
