"""Benchmark: fetch a checkpoint-sized file over bitswap from 1 and from 3 peers (loopback).

Each serving peer is a separate process (its own libp2p host and block
store on 127.0.0.1); the fetching node runs here. For every setting the
file is fetched ``--runs`` times into a fresh block store and the median is
printed, next to reading the same file from local disk:

* ``disk read``: plain sequential read of the file (4 MiB reads);
* ``disk read + verify``: the same through fedstore's CID verifier (what the
  chain does for every backend);
* ``bitswap N peer(s)``: ``BackendChain.fetch_to_file`` through the bitswap
  backend (per-block checks, block store writes, whole-file verification,
  fsync'd destination file).

Usage::

    python benchmarks/bench_bitswap.py                 # 100 MB, 3 runs
    python benchmarks/bench_bitswap.py --size-mb 20 --runs 1

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import multiaddr
import trio

from fedstore.backends.chain import BackendChain
from fedstore.ipld.cid import CidVerifier, DagParams

READ = 4 * 1024 * 1024


def _make_host() -> Any:
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport

    kp = create_new_key_pair()
    noise = Transport(kp, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(key_pair=kp, sec_opt={PROTOCOL_ID: noise})


# -- serving peer (child process) ---------------------------------------------------------


async def serve(path: str, data_dir: str) -> None:
    from fedstore_bitswap import attach

    host: Any = _make_host()
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with host.run(listen), attach(host, data_dir) as service:
        summary = await service.add(Path(path), DagParams.kubo(0))
        addr = next(str(a) for a in host.get_addrs())
        print(f"READY {summary.cid} {addr}", flush=True)
        # serve until the parent closes our stdin
        await trio.to_thread.run_sync(sys.stdin.read)


# -- fetching side -------------------------------------------------------------------------


def disk_read(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(READ):
            pass
    return time.perf_counter() - start


def disk_read_verify(path: Path, cid: str) -> float:
    start = time.perf_counter()
    verifier = CidVerifier(cid)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ):
            verifier.update(block)
    verifier.verify()
    return time.perf_counter() - start


async def fetch_once(cid: str, addrs: list[str], workdir: Path) -> tuple[float, dict[str, int]]:
    from fedstore_bitswap import BitswapBackend, attach
    from libp2p.peer.peerinfo import info_from_p2p_addr

    host: Any = _make_host()
    data_dir = Path(tempfile.mkdtemp(dir=workdir))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        service = await stack.enter_async_context(attach(host, data_dir))
        for addr in addrs:
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        chain = BackendChain([BitswapBackend(service)])
        start = time.perf_counter()
        await chain.fetch_to_file(cid, data_dir / "out.bin")
        elapsed = time.perf_counter() - start
        stats = service.last_fetch
        per_peer = dict(stats.blocks_by_peer) if stats else {}
    return elapsed, per_peer


def start_servers(
    n: int, path: Path, workdir: Path
) -> tuple[list[subprocess.Popen[str]], str, list[str]]:
    procs = []
    addrs = []
    cid = ""
    for i in range(n):
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(path), str(workdir / f"server{i}")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise SystemExit(f"a serving peer failed to start: {line}")
        cid, addr = line[1], line[2]
        addrs.append(addr)
    return procs, cid, addrs


def stop_servers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--serve", nargs=2, metavar=("FILE", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, *args.serve)
        return

    size = int(args.size_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="bench-bitswap-") as tmp:
        workdir = Path(tmp)
        path = workdir / "checkpoint.bin"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, READ)
                f.write(os.urandom(n))
                left -= n
        from fedstore.ipld.cid import cid_of_file

        cid = cid_of_file(path)
        mb = size / 1e6
        rows: list[tuple[str, float, str]] = []
        disk = statistics.median(disk_read(path) for _ in range(args.runs))
        rows.append(("disk read", disk, ""))
        verify = statistics.median(disk_read_verify(path, cid) for _ in range(args.runs))
        rows.append(("disk read + verify", verify, ""))
        for n in args.peers:
            procs, served_cid, addrs = start_servers(n, path, workdir)
            try:
                assert served_cid == cid, (served_cid, cid)
                times = []
                spread = ""
                for _ in range(args.runs):
                    elapsed, per_peer = trio.run(fetch_once, cid, addrs, workdir)
                    times.append(elapsed)
                    spread = "blocks per peer " + "/".join(
                        str(v) for v in sorted(per_peer.values(), reverse=True)
                    )
                rows.append((f"bitswap {n} peer(s)", statistics.median(times), spread))
            finally:
                stop_servers(procs)
    print(f"file: {mb:.1f} MB, CID {cid}, median of {args.runs} run(s), loopback")
    print(f"{'source':<22}{'seconds':>9}{'MB/s':>9}{'vs disk':>9}  notes")
    for name, secs, note in rows:
        print(f"{name:<22}{secs:>9.3f}{mb / secs:>9.1f}{disk / secs:>9.3f}  {note}")


if __name__ == "__main__":
    main()
