"""Benchmark: delivery time of a checkpoint announcement to every peer of a loopback network.

Usage::

    python benchmarks/bench_announce.py                    # 8 processes, 30 announcements
    python benchmarks/bench_announce.py --nodes 4 --announcements 10 --links 0

Starts ``--nodes`` separate ``fedstore node`` processes on 127.0.0.1: one
bootstrap and trainers that connect to it, each trainer also dialling the
``--links`` trainers started before it (a partial mesh, so not every message
goes through the hub). Once every node has the others it can see in its
``model-cids`` mesh, the publishers take turns (round-robin over all nodes)
announcing a fresh round ``CID:<round>:<cid>``; the next announcement is sent
only when every other node has reported it.

Delivery time for one receiver = the moment the driver read that node's
``HEARD=<round>:...`` status line minus the moment it wrote the publish
command to the publisher's stdin. It therefore includes the publisher reading
its command, signing and publishing, one or two gossipsub hops, the
receiver's validation and its catalog write (the line is printed after the
announcement is recorded), and two pipe hops: an upper bound on the network
delivery time. The first ``--warmup`` announcements are not counted.

Prints the median, p95 and max per receiver, and the same for "every peer has
it" per announcement. Asserts nothing; the issue's target is p95 < 200 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedstore.cid import cid_of_bytes
from fedstore.p2p.driver import NodeProcess, python_env

TIMEOUT = 60.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def row(label: str, values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"{label:<28} n={len(ms):<4} median {statistics.median(ms):7.1f} ms   "
        f"p95 {percentile(ms, 0.95):7.1f} ms   max {max(ms):7.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--announcements", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--links", type=int, default=1, help="extra trainer-to-trainer dials")
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")

    base = Path(tempfile.mkdtemp(prefix="fedstore-bench-announce-"))
    env = python_env(
        {
            "FEDSTORE_BACKENDS": "filesystem",
            "FEDSTORE_REANNOUNCE_INTERVAL": "0",
            "FEDSTORE_PEER_RATE": "1000",
            "FEDSTORE_PEER_BURST": "1000",
        },
        root=base / "fsroot",
    )
    nodes: list[NodeProcess] = []
    started = time.monotonic()
    try:
        boot = NodeProcess("boot", ["--role", "bootstrap", "--dir", str(base / "boot")], env)
        nodes.append(boot.start())
        boot_addr = boot.expect("LISTENING", timeout=TIMEOUT)
        for i in range(1, args.nodes):
            name = f"t{i}"
            node = NodeProcess(name, ["--dir", str(base / name), "--bootstrap", boot_addr], env)
            nodes.append(node.start())
        addrs = [n.expect("LISTENING", timeout=TIMEOUT) for n in nodes]
        ids = [n.expect("PEER_ID", timeout=TIMEOUT) for n in nodes]
        for i in range(1, args.nodes):
            for j in range(max(1, i - args.links), i):
                nodes[i].run(f"connect {addrs[j]}", timeout=TIMEOUT)
        degree = [0] * args.nodes
        for i in range(1, args.nodes):
            degree[0] += 1
            degree[i] += 1
            for j in range(max(1, i - args.links), i):
                degree[i] += 1
                degree[j] += 1
        for node, d in zip(nodes, degree, strict=True):
            node.run(f"wait_peers {min(d, 6)} model-cids 60", timeout=TIMEOUT + 10)
        setup = time.monotonic() - started
        print(
            f"{args.nodes} nodes up and meshed in {setup:.1f} s "
            f"(star on the bootstrap + {args.links} extra link(s) per trainer)"
        )

        per_receiver: list[float] = []
        all_heard: list[float] = []
        for k in range(args.announcements + args.warmup):
            round_ = 1000 + k
            cid = cid_of_bytes(f"bench announcement {k}".encode())
            publisher = k % args.nodes
            marks = [n.mark() for n in nodes]
            sent = time.monotonic()
            nodes[publisher].send(f"publish model-cids CID:{round_}:{cid}")
            arrivals = []
            for i, node in enumerate(nodes):
                if i == publisher:
                    continue
                want = f"{round_}:{cid}:{ids[publisher]}"
                line = node.wait_line(
                    "HEARD", lambda v, w=want: v == w, since=marks[i], timeout=TIMEOUT
                )
                arrivals.append(line.at - sent)
            nodes[publisher].wait_line(
                "OK", lambda v: v == "publish", since=marks[publisher], timeout=TIMEOUT
            )
            if k >= args.warmup:
                per_receiver.extend(arrivals)
                all_heard.append(max(arrivals))
        print(
            f"{args.announcements} announcements (+{args.warmup} warm-up), "
            f"{args.nodes - 1} receivers each:"
        )
        print(row("delivery to one peer", per_receiver))
        print(row("delivery to every peer", all_heard))
        p95 = percentile(per_receiver, 0.95) * 1000
        print(f"target p95 < 200 ms per peer: {'met' if p95 < 200 else 'NOT met'} ({p95:.1f} ms)")
    finally:
        for node in nodes:
            node.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
