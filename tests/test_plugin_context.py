"""An out-of-tree backend plugin gets what the built-ins get: settings, context, lifespan,
auto-detection. It is installed as a distribution of its own (entry point on the path of a
subprocess) and runs inside two real nodes (`fedstore.node.open_node`) on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

PLUGIN = '''
"""acme-journal: a third-party fedstore backend used by fedstore's tests."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from fedstore.backends import (
    BackendContext, Detected, Health, NodeHost, Setting, Source, StorageBackend, StoredObject,
    lifespan_nursery,
)
from fedstore.errors import NotConfiguredError, NotFoundError
from fedstore.ipld.cid import cid_of_bytes, parse_cid

PROTOCOL = "/acme-journal/hello/1.0.0"
LABEL = Setting("ACME_JOURNAL_LABEL", "journal", "label reported by the hello protocol",
                key="label")
ENABLE = Setting("ACME_JOURNAL_ENABLE", "false", "join the default chain inside a node",
                 kind="bool", key="enable")
TOKEN = Setting("ACME_JOURNAL_TOKEN", help="an API token (shows that secrets are redacted)",
                secret=True, key="token")


class JournalBackend(StorageBackend):
    name = "acme"
    settings = (LABEL, ENABLE, TOKEN)

    def __init__(self, root: Path, label: str, host: NodeHost | None) -> None:
        self.root = root
        self.label = label
        self.host = host
        self.served = 0

    @classmethod
    def create(cls, settings: Mapping[str, str], ctx: BackendContext) -> "JournalBackend":
        if ctx.data_dir is None:
            raise NotConfiguredError("acme: needs a node data directory", backend="acme")
        return cls(ctx.data_dir / "acme", LABEL.text(settings), ctx.host)

    @classmethod
    def detect(cls, settings: Mapping[str, str], ctx: BackendContext) -> Detected | None:
        if ctx.in_node and ENABLE.flag(settings):
            return Detected(150, "ACME_JOURNAL_ENABLE inside a node")
        return None

    def _log(self, line: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "events.log", "a", encoding="utf-8") as fh:
            fh.write(line + "\\n")

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        peer = self.host.peer_id if self.host else "-"
        self._log(f"started {peer}")
        async with lifespan_nursery() as nursery:
            if self.host is not None:
                self.host.libp2p_host.set_stream_handler(PROTOCOL, self._hello)
            nursery.start_soon(self._background, peer)
            try:
                yield
            finally:
                if self.host is not None:
                    self.host.libp2p_host.remove_stream_handler(PROTOCOL)
                self._log(f"stopped {peer}")

    async def _background(self, peer: str) -> None:
        self._log(f"background task running {peer}")
        await trio.sleep_forever()

    async def _hello(self, stream: Any) -> None:
        self.served += 1
        objects = sorted(p.name for p in (self.root / "objects").glob("*"))
        await stream.write(json.dumps({
            "label": self.label,
            "peer": self.host.peer_id if self.host else None,
            "connected": self.host.connected_peers() if self.host else [],
            "objects": objects,
        }).encode())
        await stream.close()

    async def add(self, source: Source, *, cid_version: int = 0, name: str | None = None,
                  labels: Mapping[str, str] | None = None) -> StoredObject:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        cid = cid_of_bytes(data, cid_version)
        path = self.root / "objects" / cid
        path.parent.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(path.write_bytes, data)
        return StoredObject(cid=cid, size=len(data))

    async def fetch(self, cid: str) -> AsyncIterator[bytes]:
        path = self.root / "objects" / str(parse_cid(cid))
        if not path.is_file():
            raise NotFoundError(f"acme: {cid} not here", backend="acme")
        yield await trio.to_thread.run_sync(path.read_bytes)

    async def has(self, cid: str) -> bool:
        return (self.root / "objects" / str(parse_cid(cid))).is_file()

    async def health(self) -> Health:
        return Health(reachable=True, detail=str(self.root))
'''

SCRIPT = """
import contextlib, io, json, sys
from pathlib import Path

import numpy as np
import trio

from fedstore.cli import main as cli
from fedstore.config import load_node_config
from fedstore.node import open_node

tmp = Path(sys.argv[1])
(tmp / "fedstore.toml").write_text(
    '[acme]\\nlabel = "from-toml"\\nenable = true\\ntoken = "acme-secret-4242"\\n'
)


def config(name):
    environ = {"IPFS_PATH": str(tmp / "no-ipfs"), "FEDSTORE_FS_ROOT": str(tmp / f"fs-{name}")}
    flags = {"FEDSTORE_DIR": str(tmp / name), "FEDSTORE_REANNOUNCE_INTERVAL": "0"}
    return load_node_config(flags, environ=environ, cwd=tmp)


out = {}


async def run():
    with trio.fail_after(60):
        async with open_node(config("a")) as a, open_node(config("b")) as b:
            out["chain"] = a.chain.names
            acme = a.chain.get("acme")
            out["root"] = str(acme.root)
            out["events_running"] = (tmp / "a" / "acme" / "events.log").read_text().splitlines()
            rec = await a.save_checkpoint(1, {"w": np.arange(12, dtype=np.float32)})
            out["cid"] = rec.cid
            await b.connect(a.addrs()[0])
            stream = await b.host.open_stream(a.peer_id, "/acme-journal/hello/1.0.0")
            reply = b""
            while chunk := await stream.read(65536):
                reply += chunk
            out["hello"] = json.loads(reply)
            out["a_peer"], out["b_peer"] = a.peer_id, b.peer_id
            head = await b.sync()
            out["b_head"] = [head.round, head.cid] if head else None
    out["events_after"] = (tmp / "a" / "acme" / "events.log").read_text().splitlines()


trio.run(run)

with contextlib.redirect_stdout(io.StringIO()) as shown:
    assert cli(["config", "show", "--json"]) == 0
rows = {r["name"]: r for r in json.loads(shown.getvalue())}
out["show"] = {k: rows[k] for k in ("ACME_JOURNAL_LABEL", "ACME_JOURNAL_TOKEN")}
with contextlib.redirect_stdout(io.StringIO()) as example:
    assert cli(["config", "example"]) == 0
out["example_has_acme"] = "# ACME_JOURNAL_LABEL=journal" in example.getvalue()
out["shown_secret"] = "acme-secret-4242" in shown.getvalue()
print(json.dumps(out))
"""


def _install(site: Path) -> None:
    """Lay out the acme-journal distribution the way pip installs it."""
    (site / "acme_journal").mkdir(parents=True)
    (site / "acme_journal" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "acme_journal-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-journal\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedstore.backends]\nacme = acme_journal:JournalBackend\n"
    )


def test_out_of_tree_plugin_uses_context_lifespan_and_detection(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(work)],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # auto-detection: enabled by its [acme] table, it joins inside the node at priority 150
    assert out["chain"] == ["acme", "filesystem", "bitswap"]
    # the context: its state lives in the node's data directory
    assert out["root"] == str(work / "a" / "acme")
    # the lifespan: started with the node's peer id, its background task ran
    a_peer, b_peer = out["a_peer"], out["b_peer"]
    assert out["events_running"] == [f"started {a_peer}", f"background task running {a_peer}"]
    # the checkpoint went to the first backend of the chain, the plugin
    assert (work / "a" / "acme" / "objects" / out["cid"]).is_file()
    # the host from the context: B reached the plugin's protocol on A's libp2p host
    assert out["hello"] == {
        "label": "from-toml",
        "peer": a_peer,
        "connected": [b_peer],
        "objects": [out["cid"]],
    }
    # B (same plugin, empty) got the checkpoint through its chain: from A's peers
    assert out["b_head"] == [1, out["cid"]]
    # the lifespan ended with the node
    assert out["events_after"][-1] == f"stopped {a_peer}"
    # its declared settings are listed, secrets redacted, and in the .env template
    assert out["show"]["ACME_JOURNAL_LABEL"]["value"] == "from-toml"
    assert out["show"]["ACME_JOURNAL_LABEL"]["owner"] == "acme"
    assert out["show"]["ACME_JOURNAL_LABEL"]["detail"].endswith("[acme] label")
    assert out["show"]["ACME_JOURNAL_TOKEN"]["value"] == "***"
    assert out["shown_secret"] is False
    assert out["example_has_acme"] is True
