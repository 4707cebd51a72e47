"""Signed federation manifests: canonical form, signatures, versions, duty order, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _federation import AGGREGATOR, BOTH, TRAINER, make_membership, new_signer

from fedstore.cli import main
from fedstore.errors import ManifestError
from fedstore.federation.manifest import (
    Manifest,
    Member,
    check_successor,
    initial_cid,
    load_manifest_file,
    parse_signed,
    sign_manifest,
    write_manifest_file,
)
from fedstore.federation.membership import Membership, manifest_source
from fedstore.federation.signing import (
    MANIFEST_DOMAIN,
    UPDATE_DOMAIN,
    decode_signature,
    encode_signature,
    is_ed25519_peer_id,
    verify_signature,
)
from fedstore.ipld.cid import cid_of_bytes


@pytest.fixture
def owner():  # type: ignore[no-untyped-def]
    return new_signer()


def manifest(owner, **changes):  # type: ignore[no-untyped-def]
    a, b = new_signer().peer_id, new_signer().peer_id
    members = tuple(sorted([Member(a, BOTH), Member(b, TRAINER)], key=lambda m: m.peer))
    return replace(Manifest("unit federation", owner.peer_id, members, quorum=2), **changes)


def test_signed_manifest_round_trips_and_is_addressed_by_its_bytes(owner) -> None:  # type: ignore[no-untyped-def]
    signed = sign_manifest(manifest(owner), owner)
    assert parse_signed(signed.data) == signed
    assert signed.cid == cid_of_bytes(signed.data, 1) and signed.cid.startswith("bafk")
    doc = json.loads(signed.data)
    assert set(doc) == {"manifest", "signature"} and doc["manifest"]["fedstore-manifest"] == 1
    # canonical: the stored text is the one text of the document
    assert signed.data == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["manifest"].update(rounds=11), "not its owner's"),
        (lambda d: d["manifest"]["members"].reverse(), "sorted by peer id"),
        (lambda d: d["manifest"].update(quorum=3), "quorum 3 is more than the 2 trainer"),
        (lambda d: d["manifest"].update(extra=1), "unknown manifest keys: extra"),
        (lambda d: d["manifest"].pop("rounds"), "lacks rounds"),
        (lambda d: d["manifest"].update(rounds=True), "rounds must be an integer"),
        (lambda d: d["manifest"].update(round_timeout=0), "more than 0 seconds"),
        (lambda d: d["manifest"].update(aggregation="chaos"), "aggregation must be one of"),
        (
            lambda d: d["manifest"].update(owner="QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"),
            "owner is not an Ed25519 peer id",
        ),
        (lambda d: d["manifest"]["members"][0].update(roles=["admin"]), "roles must be"),
        (lambda d: d["manifest"]["strategy"].update(name="../x"), "not a strategy name"),
        (lambda d: d["manifest"].update(previous="not a cid"), "previous is not a valid CID"),
        (lambda d: d["manifest"].update(update_encoding="int9"), "update_encoding"),
        (lambda d: d.update(signature="AAAA"), "not base64 of 64 bytes"),
    ],
)
def test_edited_or_malformed_manifests_are_refused(owner, edit, message) -> None:  # type: ignore[no-untyped-def]
    signed = sign_manifest(manifest(owner), owner)
    doc = json.loads(signed.data)
    edit(doc)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ManifestError, match=message):
        parse_signed(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"manifest":{},"signature":"x","manifest":{}}',
        b'{"manifest": {}, "signature": "x"}',  # not canonical (spaces)
        b'{"manifest":{"rounds":NaN},"signature":"x"}',
        b"{" * 5000,
        b"x" * 300_000,
    ],
)
def test_garbage_is_a_one_line_manifest_error(data: bytes) -> None:
    with pytest.raises(ManifestError) as info:
        parse_signed(data)
    assert "\n" not in str(info.value)


def test_only_the_owner_signs_and_signatures_do_not_cross_domains(owner) -> None:  # type: ignore[no-untyped-def]
    m = manifest(owner)
    with pytest.raises(ManifestError, match="this key is"):
        sign_manifest(m, new_signer())
    signed = sign_manifest(m, owner)
    doc = json.loads(signed.data)
    body = json.dumps(doc["manifest"], sort_keys=True, separators=(",", ":")).encode()
    # the owner's signature over the same bytes, made for another kind of statement
    foreign = owner.sign(UPDATE_DOMAIN, body)
    assert verify_signature(owner.peer_id, UPDATE_DOMAIN, body, foreign)
    assert not verify_signature(owner.peer_id, MANIFEST_DOMAIN, body, foreign)
    doc["signature"] = encode_signature(foreign)
    with pytest.raises(ManifestError, match="not its owner's"):
        parse_signed(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def test_signature_checks_never_raise() -> None:
    s = new_signer()
    sig = s.sign(b"d", b"m")
    assert verify_signature(s.peer_id, b"d", b"m", sig)
    for peer, signature in [
        ("", sig),
        ("x" * 500, sig),
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", sig),  # sha256 id: no inline key
        (s.peer_id, sig[:63]),
        (s.peer_id, bytes(64)),
        (s.peer_id, b"\xff" * 64),
    ]:
        assert not verify_signature(peer, b"d", b"m", signature)
    assert decode_signature(encode_signature(sig)) == sig
    assert decode_signature("A" * 88) is None and decode_signature(None) is None
    assert is_ed25519_peer_id(s.peer_id) and not is_ed25519_peer_id("12D3KooWnope")


def test_versions_name_their_predecessor_and_keep_the_owner(owner) -> None:  # type: ignore[no-untyped-def]
    v1 = sign_manifest(manifest(owner), owner)
    newcomer = new_signer().peer_id
    v2 = sign_manifest(
        replace(v1.manifest.with_members([Member(newcomer, AGGREGATOR)]), previous=v1.cid), owner
    )
    check_successor(v1, v2)
    assert v2.manifest.roles_of(newcomer) == AGGREGATOR and len(v2.manifest.members) == 3
    with pytest.raises(ManifestError, match="names no previous version"):
        check_successor(v2, v1)
    thief = new_signer()
    v2_other = sign_manifest(replace(v2.manifest, owner=thief.peer_id), thief)
    with pytest.raises(ManifestError, match="owner"):
        check_successor(v1, v2_other)
    with pytest.raises(ManifestError, match="not a member"):
        v1.manifest.without([newcomer])


def test_initial_pin_is_the_cid_of_the_weights_alone() -> None:
    arrays = {"w": np.ones((2, 2), np.float32)}
    assert initial_cid(arrays) == initial_cid({"w": np.ones((2, 2), np.float32)})
    assert initial_cid(arrays) != initial_cid({"w": np.zeros((2, 2), np.float32)})


def test_duty_order_is_the_same_for_everyone_and_moves_with_the_round(owner) -> None:  # type: ignore[no-untyped-def]
    aggs = [new_signer().peer_id for _ in range(5)]
    m = make_membership(owner, {**{a: BOTH for a in aggs}, new_signer().peer_id: TRAINER})
    again = Membership(parse_signed(m.signed.data))
    orders = [m.duty_order(r) for r in range(1, 21)]
    assert orders == [again.duty_order(r) for r in range(1, 21)]
    assert all(sorted(o) == sorted(aggs) for o in orders)
    assert len({o[0] for o in orders}) >= 3  # duty moves around
    skipped = m.duty_order(1, skip=[orders[0][0]])
    assert skipped == orders[0][1:]
    assert m.position(orders[0][2], 1) == 2 and m.position(new_signer().peer_id, 1) is None
    assert m.majority == 3 and 0.5 <= m.takeover_grace <= 15


def test_a_federation_setting_is_a_file_or_a_cid(tmp_path: Path, owner) -> None:  # type: ignore[no-untyped-def]
    signed = sign_manifest(manifest(owner), owner)
    path = tmp_path / "fed.json"
    write_manifest_file(path, signed)
    assert load_manifest_file(path) == signed
    assert manifest_source(str(path)) == ("file", str(path))
    assert manifest_source(signed.cid) == ("cid", signed.cid)
    with pytest.raises(ManifestError, match="neither a manifest file nor"):
        manifest_source(str(tmp_path / "missing.json"))


# -- the command line ----------------------------------------------------------------------------


def test_cli_init_add_remove_show_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = tmp_path / "fed.json"
    key = str(tmp_path / "owner")
    rc = main(
        ["federation", "init", "--name", "cli", "--key", key, "--member-dir",
         f"{tmp_path / 'a'}=aggregator,trainer", "--member-dir", f"{tmp_path / 'b'}=trainer",
         "--strategy", "trimmed-mean", "--strategy-setting", "trim=0.1", "--rounds", "5",
         "--quorum", "2", "--update-encoding", "int8", "--out", str(fed), "--json"]
    )  # fmt: skip
    assert rc == 0
    created = json.loads(capsys.readouterr().out)
    v1 = load_manifest_file(fed)
    assert created["cid"] == v1.cid and v1.manifest.strategy_settings == {"trim": 0.1}
    assert v1.manifest.update_encoding == "int8" and v1.manifest.rounds == 5
    newcomer = new_signer().peer_id
    assert (
        main(["federation", "add", str(fed), "--key", key, "--member", f"{newcomer}=trainer"]) == 0
    )
    v2 = load_manifest_file(fed)
    assert v2.manifest.previous == v1.cid and v2.manifest.roles_of(newcomer) == TRAINER
    v1_file = tmp_path / "v1.json"
    write_manifest_file(v1_file, v1)
    assert main(["federation", "verify", str(fed), "--previous", str(v1_file)]) == 0
    assert "valid:" in capsys.readouterr().out
    assert main(["federation", "remove", str(fed), "--key", key, "--member", newcomer]) == 0
    assert not load_manifest_file(fed).manifest.is_member(newcomer)
    capsys.readouterr()
    assert main(["federation", "show", str(fed)]) == 0
    shown = capsys.readouterr().out
    assert "trimmed-mean (trim=0.1)" in shown and "updates     int8" in shown
    # a key that is not the owner's cannot make a new version
    other = str(tmp_path / "other")
    assert main(["federation", "add", str(fed), "--key", other, "--member", newcomer]) == 1
    assert "owner is" in capsys.readouterr().err
    # an edited file fails verification, with the reason, in one line
    fed.write_bytes(fed.read_bytes().replace(b'"rounds":5', b'"rounds":6'))
    assert main(["federation", "verify", str(fed), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["valid"] is False and "not its owner's" in verdict["error"]
    assert main(["federation", "verify", str(fed)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedstore: error:") and err.count("\n") == 1
