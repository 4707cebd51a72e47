"""Benchmark: fetch a checkpoint-sized file over bitswap from 1 and from 3 peers (loopback).

Every bitswap node is a separate process (its own libp2p host and block store
on 127.0.0.1): N serving peers, and one fetching process per timed run.
Each process measures itself with ``resource.getrusage`` (user + system
CPU of all its threads) around the transfer only, so start-up and imports
are not counted:

* ``fetch CPU-s/100MB``: the fetching process during
  ``BackendChain.fetch_to_file`` through the bitswap backend (per-block
  checks, block store writes, whole-file verification, fsync'd file);
* ``serve CPU-s/100MB``: all serving processes together, over the same run.

Next to it: reading the same file from disk, plainly and through fedstore's
CID verifier. Medians of ``--runs``.

``--baseline-src DIR`` runs the same measurements, interleaved run by run,
with another source tree of fedstore (for instance ``git archive main``
unpacked into DIR): its child processes get ``PYTHONPATH=DIR:DIR/plugins``.
Both are printed side by side, so a change is measured against its base in
one run on the same machine at the same load.

``--liar`` measures something else: an honest 1 MiB fetch (Kubo's 256 KiB
chunks) with a lying peer connected (it answers HAVE to every want and never
sends; ``tests/hostile/bitswap.py``), the liar dialled first, in one process
on 127.0.0.1; with ``--baseline-src`` the same with the other tree.

Usage::

    python benchmarks/bench_bitswap.py                 # 100 MB, 3 runs, 1 and 3 peers
    python benchmarks/bench_bitswap.py --size-mb 20 --runs 1 --peers 1
    python benchmarks/bench_bitswap.py --baseline-src /tmp/fedstore-main
    python benchmarks/bench_bitswap.py --liar --runs 5 --baseline-src /tmp/fedstore-main

Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import trio

READ = 4 * 1024 * 1024
#: CPU targets of the performance issue, in CPU-seconds per 100 MB moved.
FETCH_CPU_TARGET = 2.5
SERVE_CPU_TARGET = 1.0


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    """Serve *path*; answer ``cpu`` on stdin with ``CPU <seconds>``; stop at EOF."""
    from fedstore_bitswap import attach

    from fedstore.ipld.cid import DagParams

    host: Any = _make_host()
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with host.run(listen), attach(host, data_dir) as service:
        summary = await service.add(Path(path), DagParams.kubo(0))
        addr = next(str(a) for a in host.get_addrs())
        print(f"READY {summary.cid} {addr}", flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            print(f"CPU {cpu_seconds():.6f}", flush=True)


# -- fetching peer (child process) ----------------------------------------------------------


async def fetch(cid: str, data_dir: str, addrs: list[str]) -> None:
    """Fetch *cid* from *addrs* once; print one JSON line with time, CPU and spread."""
    from fedstore_bitswap import BitswapBackend, attach
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from fedstore.backends.chain import BackendChain

    host: Any = _make_host()
    work = Path(data_dir)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        service = await stack.enter_async_context(attach(host, work))
        for addr in addrs:
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        chain = BackendChain([BitswapBackend(service)])
        cpu0 = cpu_seconds()
        start = time.perf_counter()
        result = await chain.fetch_to_file(cid, work / "out.bin")
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
        stats = service.last_fetch
        spread = sorted((stats.blocks_by_peer if stats else {}).values(), reverse=True)
    print(
        json.dumps({"seconds": elapsed, "cpu": cpu, "bytes": result.size, "spread": spread}),
        flush=True,
    )


# -- an honest fetch with a liar connected (child process) -----------------------------------


async def liar_run(workdir: str) -> None:
    """One 1 MiB fetch from an honest peer with a liar dialled first; print its seconds."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fedstore_bitswap import BitswapBackend, attach
    from hostile.bitswap import HostilePeer
    from libp2p.tools.utils import connect

    from fedstore.backends.chain import BackendChain

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    honest: Any = _make_host()
    victim: Any = _make_host()
    data = os.urandom(1024 * 1024)
    async with AsyncExitStack() as stack:
        for host in (honest, victim):
            await stack.enter_async_context(host.run(listen))
        served = await stack.enter_async_context(attach(honest, Path(workdir) / "honest"))
        mine = await stack.enter_async_context(attach(victim, Path(workdir) / "victim"))
        cid = (await BitswapBackend(served).add(data)).cid
        liar = await stack.enter_async_context(HostilePeer.start("liar"))
        await liar.connect_to(victim)
        await connect(victim, honest)
        start = time.perf_counter()
        with trio.fail_after(120):
            got = await BackendChain([BitswapBackend(mine)]).fetch_bytes(cid)
        elapsed = time.perf_counter() - start
        assert got == data
    print(json.dumps({"seconds": elapsed}), flush=True)


def liar_main(trees: list[tuple[str, str | None]], runs: int) -> None:
    times: dict[str, list[float]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="bench-bitswap-liar-") as tmp:
        for i in range(runs):
            for name, src in trees:  # interleaved
                work = Path(tmp) / f"{name.replace(' ', '_')}{i}"
                proc = subprocess.run(
                    [sys.executable, __file__, "--liar-run", str(work)],
                    capture_output=True,
                    text=True,
                    env=child_env(src),
                    timeout=300,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"liar run failed ({name}):\n{proc.stderr[-3000:]}")
                times[name].append(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    print(f"honest 1 MiB fetch with a liar connected (dialled first), {runs} run(s), loopback")
    for name, _ in trees:
        t = times[name]
        print(
            f"{name:<11} median {statistics.median(t):6.2f} s   "
            f"runs {' '.join(f'{x:.2f}' for x in t)}"
        )
    print("target: < 5 s (issue 15 item 2; the old block timeout alone was 15 s)")


# -- the driver -------------------------------------------------------------------------------


def disk_read(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(READ):
            pass
    return time.perf_counter() - start


def disk_read_verify(path: Path, cid: str) -> float:
    from fedstore.ipld.cid import CidVerifier

    start = time.perf_counter()
    verifier = CidVerifier(cid)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ):
            verifier.update(block)
    verifier.verify()
    return time.perf_counter() - start


def child_env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        parts = [src, os.path.join(src, "plugins")]
        if env.get("PYTHONPATH"):
            parts.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


class Servers:
    """N serving processes of one source tree."""

    def __init__(self, n: int, path: Path, workdir: Path, src: str | None, tag: str) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.addrs: list[str] = []
        self.cid = ""
        env = child_env(src)
        for i in range(n):
            argv = [sys.executable, __file__, "--serve", str(path), str(workdir / f"{tag}-s{i}")]
            self.procs.append(
                subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
            )
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "READY":
                self.stop()
                raise SystemExit(f"a serving peer failed to start: {line}")
            self.cid = line[1]
            self.addrs.append(line[2])

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("cpu\n")
            proc.stdin.flush()
            key, value = proc.stdout.readline().split()
            assert key == "CPU"
            total += float(value)
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)
    fetch_cpu: list[float] = field(default_factory=list)  # per 100 MB
    serve_cpu: list[float] = field(default_factory=list)  # per 100 MB
    spread: list[int] = field(default_factory=list)


def one_run(servers: Servers, cid: str, workdir: Path, src: str | None, tag: str) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{tag}-f", dir=workdir))
    before = servers.cpu()
    proc = subprocess.run(
        [sys.executable, __file__, "--fetch", cid, str(data_dir), *servers.addrs],
        capture_output=True,
        text=True,
        env=child_env(src),
        timeout=600,
    )
    after = servers.cpu()
    if proc.returncode != 0:
        raise SystemExit(f"fetch failed ({tag}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["serve_cpu"] = after - before
    subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 3])
    parser.add_argument(
        "--baseline-src", metavar="DIR", help="another fedstore source tree to compare with"
    )
    parser.add_argument(
        "--liar", action="store_true", help="time an honest fetch with a lying peer connected"
    )
    parser.add_argument("--serve", nargs=2, metavar=("FILE", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--fetch", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument("--liar-run", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, *args.serve)
        return
    if args.fetch:
        cid, data_dir, *addrs = args.fetch
        trio.run(fetch, cid, data_dir, addrs)
        return
    if args.liar_run:
        trio.run(liar_run, args.liar_run)
        return

    from fedstore.ipld.cid import cid_of_file

    trees: list[tuple[str, str | None]] = [("this tree", None)]
    if args.baseline_src:
        trees.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    if args.liar:
        liar_main(trees, args.runs)
        return
    size = int(args.size_mb * 1024 * 1024)
    rows: list[tuple[str, str, Runs]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bitswap-") as tmp:
        workdir = Path(tmp)
        path = workdir / "checkpoint.bin"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, READ)
                f.write(os.urandom(n))
                left -= n
        cid = cid_of_file(path)
        disk = statistics.median(disk_read(path) for _ in range(args.runs))
        verify = statistics.median(disk_read_verify(path, cid) for _ in range(args.runs))
        for n in args.peers:
            groups = {name: Servers(n, path, workdir, src, f"{i}p{n}") for i, (name, src) in
                      enumerate(trees)}  # fmt: skip
            try:
                results = {name: Runs() for name, _ in trees}
                for _ in range(args.runs):
                    for i, (name, src) in enumerate(trees):  # interleaved: same load for both
                        servers = groups[name]
                        assert servers.cid == cid, (servers.cid, cid)
                        out = one_run(servers, cid, workdir, src, f"{i}p{n}")
                        per100 = 100e6 / out["bytes"]
                        r = results[name]
                        r.seconds.append(out["seconds"])
                        r.fetch_cpu.append(out["cpu"] * per100)
                        r.serve_cpu.append(out["serve_cpu"] * per100)
                        r.spread = out["spread"]
                for name, _ in trees:
                    rows.append((f"bitswap {n} peer(s)", name, results[name]))
            finally:
                for servers in groups.values():
                    servers.stop()
    mb = size / 1e6
    print(f"file: {mb:.1f} MB, CID {cid}, median of {args.runs} run(s), loopback")
    print(f"disk read {disk:.3f} s ({mb / disk:.0f} MB/s); + CID verify {verify:.3f} s")
    print(
        f"{'source':<20}{'tree':<11}{'seconds':>9}{'MB/s':>8}"
        f"{'fetch CPU-s/100MB':>19}{'serve CPU-s/100MB':>19}  notes"
    )
    for source, tree, r in rows:
        secs = statistics.median(r.seconds)
        print(
            f"{source:<20}{tree:<11}{secs:>9.3f}{mb / secs:>8.1f}"
            f"{statistics.median(r.fetch_cpu):>19.2f}{statistics.median(r.serve_cpu):>19.2f}"
            f"  blocks per peer {'/'.join(map(str, r.spread))}"
        )
    print(
        f"targets: fetch <= {FETCH_CPU_TARGET} CPU-s/100MB, serve <= {SERVE_CPU_TARGET} "
        "CPU-s/100MB (serve: all serving processes together)"
    )


if __name__ == "__main__":
    main()
