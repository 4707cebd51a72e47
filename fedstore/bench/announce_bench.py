"""Section ``announce``: delivery time of a checkpoint announcement across peer processes.

Starts ``peers`` separate ``fedstore node`` processes on 127.0.0.1 (one
bootstrap; every trainer dials it and the trainer started before it, a
partial mesh, so not every message goes through the hub) and waits until each
has its peers in the ``model-cids`` mesh. Publishers then take turns
announcing a fresh ``CID:<round>:<cid>``; the next announcement goes out only
when every other node has reported the current one.

Delivery time for one receiver = when the driver read that node's
``HEARD=`` status line minus when it wrote the publish command to the
publisher's stdin. It includes the publisher reading its command, signing
and publishing, one or two gossipsub hops, the receiver's validation and its
catalog write, and two pipe hops: an upper bound on network delivery.
Target: p95 under 50 ms per peer with 8 processes.

To tell the network path from the machine, each announcement is followed by
a ``peers`` command to one node (rotating): its round trip (pipe in, one
trio wake-up, pipe out, no network, no catalog) is the floor that process
scheduling alone puts under every delivery. The load average during the run
is recorded with it: on a shared two-core machine a run with other jobs
waiting for the CPUs is slower throughout.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from fedstore.bench.common import BenchSizes, Row, SayFn, SectionResult, Target, percentile

NAME = "announce"
TITLE = "Announcement delivery"

TIMEOUT = 60.0
#: Extra trainer-to-trainer dials per trainer (besides the bootstrap).
LINKS = 1
P95_TARGET = Target("<", 50.0, on="value")


def describe(sizes: BenchSizes) -> str:
    return f"{sizes.peers} peer processes, {sizes.announcements} announcements"


def run(sizes: BenchSizes, workdir: Path, say: SayFn) -> SectionResult:
    from fedstore.ipld.cid import cid_of_bytes
    from fedstore.node.driver import NodeProcess, python_env

    n = int(sizes.peers)
    if n < 2:
        raise ValueError("the announcement benchmark needs at least 2 peers")
    env = python_env(
        {
            "FEDSTORE_BACKENDS": "filesystem",
            "FEDSTORE_REANNOUNCE_INTERVAL": "0",
            "FEDSTORE_PEER_RATE": "1000",
            "FEDSTORE_PEER_BURST": "1000",
        },
        root=workdir / "fsroot",
    )
    nodes: list[NodeProcess] = []
    started = time.monotonic()
    try:
        say(f"starting {n} node processes")
        boot = NodeProcess("boot", ["--role", "bootstrap", "--dir", str(workdir / "boot")], env)
        nodes.append(boot.start())
        boot_addr = boot.expect("LISTENING", timeout=TIMEOUT)
        for i in range(1, n):
            name = f"t{i}"
            args = ["--dir", str(workdir / name), "--bootstrap", boot_addr]
            nodes.append(NodeProcess(name, args, env).start())
        addrs = [node.expect("LISTENING", timeout=TIMEOUT) for node in nodes]
        ids = [node.expect("PEER_ID", timeout=TIMEOUT) for node in nodes]
        degree = [0] * n
        for i in range(1, n):
            degree[0] += 1
            degree[i] += 1
            for j in range(max(1, i - LINKS), i):
                nodes[i].run(f"connect {addrs[j]}", timeout=TIMEOUT)
                degree[i] += 1
                degree[j] += 1
        say("waiting for the gossipsub mesh")
        for node, d in zip(nodes, degree, strict=True):
            node.run(f"wait_peers {min(d, 6)} model-cids 60", timeout=TIMEOUT + 10)
        setup_s = time.monotonic() - started

        per_receiver: list[float] = []
        all_heard: list[float] = []
        floor: list[float] = []
        load_before = os.getloadavg()[0]
        total = sizes.announcements + sizes.warmup
        for k in range(total):
            say(f"announcement {k + 1}/{total}")
            round_ = 1000 + k
            cid = cid_of_bytes(f"bench announcement {k}".encode())
            publisher = k % n
            marks = [node.mark() for node in nodes]
            sent = time.monotonic()
            nodes[publisher].send(f"publish model-cids CID:{round_}:{cid}")
            arrivals = []
            for i, node in enumerate(nodes):
                if i == publisher:
                    continue
                want = f"{round_}:{cid}:{ids[publisher]}"
                line = node.wait_line("HEARD", want.__eq__, since=marks[i], timeout=TIMEOUT)
                arrivals.append(line.at - sent)
            nodes[publisher].wait_line(
                "OK", "publish".__eq__, since=marks[publisher], timeout=TIMEOUT
            )
            pinged = nodes[(publisher + 1 + k // n) % n]
            ping_sent = time.monotonic()
            pos = pinged.send("peers")
            ok = pinged.wait_line("OK", "peers".__eq__, since=pos, timeout=TIMEOUT)
            if k >= sizes.warmup:
                per_receiver.extend(arrivals)
                all_heard.append(max(arrivals))
                floor.append(ok.at - ping_sent)
        load_after = os.getloadavg()[0]
    finally:
        say("stopping the nodes")
        for node in nodes:
            node.close()

    result = SectionResult(
        NAME,
        TITLE,
        params={
            "peers": n,
            "announcements": sizes.announcements,
            "warmup": sizes.warmup,
            "topology": f"star on the bootstrap + {LINKS} extra link(s) per trainer",
            "setup_seconds": round(setup_s, 2),
        },
    )
    ms_one = [v * 1000 for v in per_receiver]
    ms_all = [v * 1000 for v in all_heard]
    ms_floor = [v * 1000 for v in floor]
    result.params["load_average"] = [round(load_before, 2), round(load_after, 2)]
    for measure, values in (
        (f"delivery to one peer ({n - 1} receivers)", ms_one),
        ("delivery to every peer", ms_all),
        ("command round trip, no network (floor)", ms_floor),
    ):
        result.add(Row(measure, "median", statistics.median(values), "ms", "time", samples=values))
        result.add(
            Row(
                measure,
                "p95",
                percentile(values, 0.95),
                "ms",
                "time",
                target=P95_TARGET if "one peer" in measure else None,
            )
        )
        result.add(Row(measure, "max", max(values), "ms", "time"))
    result.notes.append(
        f"{n} processes up and meshed in {setup_s:.1f} s; times from writing the publish "
        "command to reading HEARD= (includes two pipe hops and the catalog write); "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after "
        f"({os.cpu_count()} CPUs)"
    )
    return result
