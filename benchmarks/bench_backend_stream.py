"""Benchmark: streaming a large checkpoint through the Kubo and Pinata backends.

Usage::

    python benchmarks/bench_backend_stream.py                # 1 GiB, kubo and pinata
    python benchmarks/bench_backend_stream.py --size-mib 128 --backends kubo

For each backend, a fresh subprocess puts the file through the backend (which
streams a multipart body, or TUS chunks for Pinata above 90 MiB, and computes
the CID while sending) into the in-process fake service of the plugin
(``fedstore_kubo.testing.FakeKubo`` / ``fedstore_pinata.testing.FakePinata``,
an httpx transport that parses the body as it streams and stores blobs on
disk), then gets it back through :class:`BackendChain.fetch_to_file` (verified
against the CID). No socket is involved, so the figures measure fedstore's
streaming, hashing and the fake's own hashing, not a network.

Peak memory is the child's ``VmHWM`` (Linux peak RSS) after the put and after
the get, next to its RSS right after the imports. Prints figures; asserts
nothing. The target: peak well under 300 MB for a 1 GiB object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def _vm(field: str) -> int:
    """A ``/proc/self/status`` figure in MiB (-1 where unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


def child(backend_name: str, source: Path, workdir: Path) -> None:
    import trio

    from fedstore.backends import BackendChain, StorageBackend
    from fedstore.backends.http import RetryPolicy, Secret

    base_rss = _vm("VmRSS")
    blob_dir = workdir / f"blobs-{backend_name}"
    blob_dir.mkdir()
    backend: StorageBackend
    if backend_name == "kubo":
        from fedstore_kubo import KuboBackend
        from fedstore_kubo.testing import FakeKubo

        backend = KuboBackend(
            "http://127.0.0.1:5001", transport=FakeKubo(blob_dir=blob_dir), retry=RetryPolicy()
        )
    else:
        from fedstore_pinata import PinataBackend, PinataConfig
        from fedstore_pinata.testing import FakePinata

        cfg = PinataConfig(
            jwt=Secret("bench-jwt"),
            api_url="https://api.bench",
            upload_url="https://uploads.bench",
            gateway_url="https://gw.bench",
        )
        backend = PinataBackend(cfg, transport=FakePinata(jwt="bench-jwt", blob_dir=blob_dir))

    async def run() -> dict[str, object]:
        async with BackendChain([backend]) as chain:
            t0 = time.perf_counter()
            stored = await backend.add(source, cid_version=1)
            put_s = time.perf_counter() - t0
            hwm_put = _vm("VmHWM")
            out = workdir / f"out-{backend_name}.bin"
            t0 = time.perf_counter()
            result = await chain.fetch_to_file(stored.cid, out)
            get_s = time.perf_counter() - t0
            assert result.size == source.stat().st_size
            out.unlink()
            return {
                "backend": backend_name,
                "cid": stored.cid,
                "put_s": put_s,
                "get_s": get_s,
                "base_rss_mib": base_rss,
                "peak_after_put_mib": hwm_put,
                "peak_after_get_mib": _vm("VmHWM"),
            }

    print(json.dumps(trio.run(run)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="object size (default 1024)")
    parser.add_argument("--backends", default="kubo,pinata", help="comma-separated (kubo,pinata)")
    parser.add_argument(
        "--child", nargs=3, metavar=("BACKEND", "SOURCE", "WORKDIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="fedstore-bench-") as tmp:
        work = Path(tmp)
        source = work / "checkpoint.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        print(f"object: {args.size_mib} MiB of random bytes; fake services on disk in {tmp}")
        header = (
            f"{'backend':<8} {'put s':>7} {'put MiB/s':>10} {'get s':>7} {'get MiB/s':>10} "
            f"{'RSS base':>9} {'peak put':>9} {'peak get':>9}"
        )
        print(header)
        for name in [n.strip() for n in args.backends.split(",") if n.strip()]:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, str(source), str(work)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(f"{name:<8} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mib = size / MIB
            print(
                f"{name:<8} {r['put_s']:>7.2f} {mib / r['put_s']:>10.1f} {r['get_s']:>7.2f} "
                f"{mib / r['get_s']:>10.1f} {r['base_rss_mib']:>6} MiB "
                f"{r['peak_after_put_mib']:>5} MiB {r['peak_after_get_mib']:>5} MiB"
            )
        print("peak = VmHWM of the child process (includes the fake service in the same process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
