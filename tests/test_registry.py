"""Backend resolution by name through the fedstore.backends entry-point group."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedstore.backends import (
    available_backends,
    build_backends,
    default_backend_names,
    detect_default_chain,
    load_backend,
    parse_backend_list,
)
from fedstore.errors import BackendLoadError, ConfigError, NotConfiguredError

REPO = Path(__file__).resolve().parents[1]


def test_filesystem_is_installed_with_its_origin() -> None:
    info = available_backends()["filesystem"]
    assert info.target == "fedstore_filesystem:FilesystemBackend"
    assert info.distribution == "fedstore"


def test_unknown_name_lists_installed() -> None:
    with pytest.raises(BackendLoadError) as info:
        load_backend("no-such-backend", {})
    msg = str(info.value)
    assert "no-such-backend" in msg
    for name in available_backends():
        assert name in msg


def test_parse_backend_list() -> None:
    assert parse_backend_list(" pinata, kubo,,filesystem,kubo ") == ["pinata", "kubo", "filesystem"]


def test_default_chain_depends_on_configuration(tmp_path: Path) -> None:
    home = {"IPFS_PATH": str(tmp_path / "noipfs")}
    kubo = {"FEDSTORE_KUBO_API": "/ip4/127.0.0.1/tcp/5001"}
    assert default_backend_names(home) == ["filesystem"]
    assert default_backend_names({**home, **kubo}) == ["kubo", "filesystem"]
    # each backend decides on its own evidence: Pinata credentials do not imply a Kubo daemon
    assert default_backend_names({**home, "PINATA_JWT": "x"}) == ["pinata", "filesystem"]
    assert default_backend_names({**home, "PINATA_API_KEY": "k"}) == ["filesystem"]
    assert default_backend_names({**home, "PINATA_API_KEY": "k", "PINATA_API_SECRET": "s"}) == [
        "pinata",
        "filesystem",
    ]
    assert default_backend_names({**home, **kubo, "PINATA_JWT": "x"}) == [
        "pinata",
        "kubo",
        "filesystem",
    ]
    assert default_backend_names({**home, "FEDSTORE_BACKENDS": "filesystem"}) == ["filesystem"]
    (tmp_path / "ipfs").mkdir()
    (tmp_path / "ipfs" / "api").write_text("/ip4/127.0.0.1/tcp/5001")
    assert default_backend_names({"IPFS_PATH": str(tmp_path / "ipfs")}) == ["kubo", "filesystem"]


def test_default_chain_says_why(tmp_path: Path) -> None:
    members = detect_default_chain({"IPFS_PATH": str(tmp_path), "PINATA_JWT": "x"})
    assert [(m.name, m.priority) for m in members] == [("pinata", 300), ("filesystem", 100)]
    assert members[0].reason == "PINATA_JWT is set"
    assert "PINATA_JWT" not in members[1].reason and members[0].reason != "x"


def test_invalid_setting_value_is_refused_before_create(tmp_path: Path) -> None:
    env = {"PINATA_JWT": "jwt-secret-value", "PINATA_RATE_LIMIT": "nan"}
    with pytest.raises(ConfigError, match="PINATA_RATE_LIMIT='nan' is not a finite number"):
        load_backend("pinata", env)
    with pytest.raises(ConfigError, match="FEDSTORE_HTTP_ATTEMPTS='0' must be between 1 and 100"):
        build_backends(["filesystem", "kubo"], {"FEDSTORE_HTTP_ATTEMPTS": "0"})


def test_build_backends_skips_unconfigured(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:

    env = {"FEDSTORE_FS_ROOT": str(tmp_path)}
    backends = build_backends(["filesystem"], env)
    assert [b.name for b in backends] == ["filesystem"]
    with pytest.raises(BackendLoadError):
        build_backends(["filesystem", "typo"], env)


def test_all_unconfigured_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedstore.backends import registry

    def refuse(name: str, env: object, ctx: object = None) -> object:
        raise NotConfiguredError(f"{name} needs settings")

    monkeypatch.setattr(registry, "load_backend", refuse)
    with pytest.raises(NotConfiguredError, match="no usable backend"):
        registry.build_backends(["a", "b"], {})


def _fake_dist(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Lay out an installed distribution's metadata the way pip does."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[fedstore.backends]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def _run_in(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.multiprocess
def test_out_of_tree_plugin_is_found_by_name(tmp_path: Path) -> None:
    """A copy of the filesystem plugin, in a distribution of its own, is found by name."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(REPO / "plugins" / "fedstore_filesystem", site / "acme_store")
    _fake_dist(site, "acme-store", {"acme": "acme_store:FilesystemBackend"})
    proc = _run_in(
        site,
        f"""
        import json, trio
        from fedstore.backends import available_backends, load_backend, BackendChain
        backend = load_backend("acme", {{"FEDSTORE_FS_ROOT": {str(tmp_path / "root")!r}}})
        async def main():
            chain = BackendChain([backend])
            r = await chain.add(b"third party")
            return r.cid, await chain.fetch_bytes(r.cid)
        cid, data = trio.run(main)
        info = available_backends()["acme"]
        print(json.dumps([type(backend).__module__, info.distribution, cid, data.decode()]))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    module, dist, cid, data = json.loads(proc.stdout)
    assert module == "acme_store"
    assert dist == "acme-store"
    assert data == "third party"
    from fedstore.ipld.cid import cid_of_bytes

    assert cid == cid_of_bytes(b"third party")


@pytest.mark.multiprocess
def test_broken_plugins_name_plugin_and_cause(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "half_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (site / "not_a_backend.py").write_text("class Thing:\n    pass\n")
    _fake_dist(
        site,
        "broken-plugins",
        {
            "missing": "no_such_module_xyz:Backend",
            "crashing": "half_broken:Backend",
            "wrongtype": "not_a_backend:Thing",
        },
    )
    proc = _run_in(
        site,
        """
        import json
        from fedstore.backends import load_backend
        from fedstore.errors import BackendLoadError
        out = {}
        for name in ["missing", "crashing", "wrongtype"]:
            try:
                load_backend(name, {})
            except BackendLoadError as exc:
                out[name] = str(exc)
        print(json.dumps(out))
        """,
    )
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout)
    assert "'missing'" in errors["missing"] and "no_such_module_xyz" in errors["missing"]
    assert "'crashing'" in errors["crashing"] and "boom at import" in errors["crashing"]
    assert "'wrongtype'" in errors["wrongtype"] and "StorageBackend" in errors["wrongtype"]
