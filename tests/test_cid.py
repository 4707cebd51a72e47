"""fedstore.ipld.cid / fedstore.ipld.unixfs: Kubo vectors, layout, parsing, verification, CLI."""

from __future__ import annotations

import array
import functools
import hashlib
import math
from pathlib import Path

import cid as pycid  # py-cid, an independent CID implementation (libp2p dependency)
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstore.cli import main
from fedstore.errors import ConfigError, IntegrityError, InvalidCIDError, SizeLimitError
from fedstore.ipld.cid import (
    CidBuilder,
    CidVerifier,
    DagParams,
    ParsedCid,
    cid_from_bytes,
    cid_of_bytes,
    cid_of_file,
    cid_to_bytes,
    cid_to_str,
    parse_cid,
    verify_bytes,
)
from fedstore.ipld.unixfs import (
    CODEC_DAG_PB,
    CODEC_RAW,
    Link,
    TreeNode,
    binary_cid,
    decode_pbnode,
    decode_unixfs,
    encode_internal_node,
    hash_leaf,
)

KIB = 1024
CHUNK = 256 * KIB


@functools.lru_cache(maxsize=4)
def seeded(seed: str, n: int) -> bytes:
    """Kubo's deterministic test data: ChaCha20 keystream, key sha256(seed), zero nonce."""
    key = hashlib.sha256(seed.encode()).digest()
    enc = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()
    return enc.update(b"\0" * n)


def seeded_prefix(seed: str, n: int, longest: int) -> bytes:
    """The first n bytes of the seeded stream (the keystream's prefix is the same)."""
    return seeded(seed, longest)[:n]


def pattern(n: int) -> bytes:
    return bytes((i * 31 + 7) % 251 for i in range(n))


V1_2025 = DagParams.unixfs_v1_2025()
BIG = 174 * CHUNK + 1

# (id, data factory, params, expected CID) -- every vector of reference/cid-unixfs.md
VECTORS = [
    (
        "hello-v0",
        lambda: b"hello\n",
        DagParams(0),
        "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN",
    ),
    (
        "hello-v1",
        lambda: b"hello\n",
        DagParams(1),
        "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am",
    ),
    ("empty-v0", lambda: b"", DagParams(0), "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
    (
        "empty-v1",
        lambda: b"",
        DagParams(1),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    ),
    (
        "hello-world-v0",
        lambda: b"hello world",
        DagParams(0),
        "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD",
    ),
    (
        "hello-world-v1",
        lambda: b"hello world",
        DagParams(1),
        "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
    ),
    (
        "hello-world-nl-v0",
        lambda: b"hello world\n",
        DagParams(0),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
    ),
    (
        "hello-world-nl-v1",
        lambda: b"hello world\n",
        DagParams(1),
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
    ),
    (
        "one-chunk-v0",
        lambda: seeded_prefix("chunk-v0-seed", CHUNK, CHUNK + 1),
        DagParams(0),
        "QmWmRj3dFDZdb6ABvbmKhEL6TmPbAfBZ1t5BxsEyJrcZhE",
    ),
    (
        "two-leaves-v0",
        lambda: seeded_prefix("chunk-v0-seed", CHUNK + 1, CHUNK + 1),
        DagParams(0),
        "QmYyLxtzZyW22zpoVAtKANLRHpDjZtNeDjQdJrcQNWoRkJ",
    ),
    (
        "174-links-v0",
        lambda: seeded_prefix("v0-seed", 174 * CHUNK, BIG),
        DagParams(0),
        "QmUbBALi174SnogsUzLpYbD4xPiBSFANF4iztWCsHbMKh2",
    ),
    (
        "depth-2-v0",
        lambda: seeded_prefix("v0-seed", BIG, BIG),
        DagParams(0),
        "QmV81WL765sC8DXsRhE5fJv2rwhS4icHRaf3J9Zk5FdRnW",
    ),
    (
        "1MiB-v1-2025",
        lambda: seeded_prefix("chunk-v1-seed", 1024 * KIB, 1024 * KIB + 1),
        V1_2025,
        "bafkreiacndfy443ter6qr2tmbbdhadvxxheowwf75s6zehscklu6ezxmta",
    ),
    (
        "1MiB+1-v1-2025",
        lambda: seeded_prefix("chunk-v1-seed", 1024 * KIB + 1, 1024 * KIB + 1),
        V1_2025,
        "bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64",
    ),
    (
        "pattern-262145-v0",
        lambda: pattern(CHUNK + 1),
        DagParams(0),
        "QmP8yTqWQcb3qVoBcdE4pTUzxh9kazndg5ELrbXBmdj17M",
    ),
    (
        "pattern-1MiB-v0",
        lambda: pattern(1024 * KIB),
        DagParams(0),
        "QmfP6GjfZnzRi5Lj1AYF4HurNVhebyeRvCdDnd8VVeCP32",
    ),
]


@pytest.mark.parametrize(
    ("data_fn", "params", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_reference_vectors(data_fn, params: DagParams, expected: str) -> None:
    data = data_fn()
    assert cid_of_bytes(data, params=params) == expected
    # the same through the streaming builder fed in uneven pieces
    builder = CidBuilder(params)
    step = 100_003
    for off in range(0, len(data), step):
        builder.update(memoryview(data)[off : off + step])
    assert builder.finalize() == expected
    # and the verifier accepts it with its default candidate profiles
    verify_bytes(expected, data)


def test_cid_version_argument_matches_kubo_flags() -> None:
    assert cid_of_bytes(b"hello\n") == "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    assert cid_of_bytes(b"hello\n", 1).startswith("bafkrei")
    data = seeded_prefix("chunk-v0-seed", CHUNK + 1, CHUNK + 1)
    assert cid_of_bytes(data, 1).startswith("bafybei")  # multi-block v1: dag-pb root


@pytest.mark.parametrize("vector_id", ["two-leaves-v0", "1MiB+1-v1-2025", "empty-v0"])
def test_cid_of_file_matches_vectors(tmp_path: Path, vector_id: str) -> None:
    _, data_fn, params, expected = next(v for v in VECTORS if v[0] == vector_id)
    path = tmp_path / "f.bin"
    path.write_bytes(data_fn())
    seen: list[int] = []
    assert cid_of_file(path, params=params, progress=seen.append) == expected
    assert seen == sorted(seen)
    assert (seen[-1] if seen else 0) == path.stat().st_size


def test_cid_of_file_missing_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        cid_of_file(tmp_path / "nope")


# --------------------------------------------------------------------------- layout


def _reference_layout(n_leaves: int, max_links: int) -> list[object]:
    """Descriptive model of the balanced layout: a left-packed complete tree of
    the smallest depth D with max_links**D >= n; every node below the root
    splits its leaves into groups of max_links**(depth-1), even a lone leaf."""
    depth = 0
    while max_links**depth < n_leaves:
        depth += 1

    def build(lo: int, hi: int, d: int) -> object:
        if d == 0:
            assert hi - lo == 1
            return lo
        span = max_links ** (d - 1)
        return [build(s, min(s + span, hi), d - 1) for s in range(lo, hi, span)]

    return build(0, n_leaves, depth)  # type: ignore[return-value]


def _shape(tree: TreeNode | int) -> object:
    if isinstance(tree, int):
        return tree
    return [_shape(c) for c in tree.children]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), max_links=st.integers(2, 6))
def test_layout_matches_descriptive_model(n: int, max_links: int) -> None:
    params = DagParams(0, chunk_size=1, max_links=max_links)
    dag = CidBuilder(params)
    dag.update(bytes(range(n)))
    built = dag.build()
    assert len(built.leaves) == n
    assert _shape(built.tree) == _reference_layout(n, max_links)


def test_lone_trailing_chunk_is_wrapped_in_its_own_node() -> None:
    # 4 chunks, 3 links: root -> [node(3 leaves), node(1 leaf)] (not [node, leaf])
    built = _build(b"abcd", DagParams(0, chunk_size=1, max_links=3))
    assert isinstance(built.tree, TreeNode)
    assert _shape(built.tree) == [[0, 1, 2], [3]]
    root = decode_pbnode(built.tree.block)
    assert len(root.links) == 2
    second = built.tree.children[1]
    assert isinstance(second, TreeNode)
    assert root.links[1].cid == second.link.cid
    inner = decode_pbnode(second.block)
    assert len(inner.links) == 1
    ufs = decode_unixfs(inner.data or b"")
    assert (ufs.filesize, ufs.blocksizes) == (1, (1,))


def _build(data: bytes, params: DagParams):  # type: ignore[no-untyped-def]
    b = CidBuilder(params)
    b.update(data)
    return b.build()


def test_internal_node_encoding_rules() -> None:
    data = seeded_prefix("chunk-v0-seed", CHUNK + 1, CHUNK + 1)
    built = _build(data, DagParams(0))
    assert isinstance(built.tree, TreeNode)
    block = built.tree.block
    node = decode_pbnode(block)
    # links come first in the bytes, Data last; Name is written even when empty
    assert block[0] == 0x12
    assert block.count(b"\x12\x00\x18") == 2
    assert [lk.name for lk in node.links] == [b"", b""]
    ufs = decode_unixfs(node.data or b"")
    assert (ufs.type, ufs.data, ufs.filesize, ufs.blocksizes) == (2, b"", CHUNK + 1, (CHUNK, 1))
    assert b"\x20\x80\x80\x10\x20\x01" in block  # blocksizes unpacked, one tag per entry
    # Tsize = child block length (leaf: chunk + UnixFS/dag-pb envelope)
    assert node.links[0].tsize == built.leaves[0].tsize > CHUNK
    assert built.root.tsize == len(block) + sum(lk.tsize for lk in built.leaves)


def test_leaf_encoding_rules() -> None:
    empty = hash_leaf(b"", raw=False, cid_version=0)
    assert empty.cid == b"\x12\x20" + hashlib.sha256(b"\x0a\x04\x08\x02\x18\x00").digest()
    leaf = hash_leaf(b"hi", raw=False, cid_version=0)
    block = b"\x0a\x08\x08\x02\x12\x02hi\x18\x02"
    assert leaf == Link(b"\x12\x20" + hashlib.sha256(block).digest(), len(block), 2)
    raw = hash_leaf(b"hi", raw=True, cid_version=0)  # raw leaves are always CIDv1 raw
    assert raw == Link(binary_cid(1, CODEC_RAW, hashlib.sha256(b"hi").digest()), 2, 2)


def test_encode_internal_node_roundtrips_through_decoder() -> None:
    links = [Link(b"\x12\x20" + bytes([i]) * 32, 300 + i, 200 + i) for i in range(3)]
    node = decode_pbnode(encode_internal_node(links))
    assert [(lk.cid, lk.tsize) for lk in node.links] == [(lk.cid, lk.tsize) for lk in links]
    assert decode_unixfs(node.data or b"").blocksizes == (200, 201, 202)


# --------------------------------------------------------------------------- builder


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
    chunk_size=st.integers(1, 700),
    max_links=st.integers(2, 6),
    version=st.sampled_from([0, 1]),
    raw=st.sampled_from([None, True, False]),
)
def test_builder_split_points_do_not_matter(
    data: bytes, cuts: list[int], chunk_size: int, max_links: int, version: int, raw: bool | None
) -> None:
    params = DagParams(version, chunk_size=chunk_size, max_links=max_links, raw_leaves=raw)
    one_shot = cid_of_bytes(data, params=params)
    builder = CidBuilder(params)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        builder.update(data[lo:hi])
        assert builder.size == hi
        assert len(builder._buf) < chunk_size  # never more than one partial chunk buffered
    assert builder.finalize() == one_shot
    assert builder.finalize() == one_shot  # idempotent
    assert len(builder.build().leaves) == max(1, math.ceil(len(data) / chunk_size))


def test_builder_accepts_any_buffer_and_refuses_updates_after_finalize() -> None:
    words = array.array("I", range(1000))
    b = CidBuilder(DagParams(0, chunk_size=512))
    b.update(words)
    assert b.size == words.itemsize * 1000
    assert b.finalize() == cid_of_bytes(words.tobytes(), params=DagParams(0, chunk_size=512))
    with pytest.raises(RuntimeError):
        b.update(b"more")


def test_dag_params_validation_and_profiles() -> None:
    assert DagParams(1) == DagParams(1, raw_leaves=True)
    assert DagParams(0).raw_leaves is False
    assert DagParams.profile("kubo", 1) == DagParams(1)
    assert DagParams.profile("unixfs-v0-2015") == DagParams(0)
    assert DagParams.profile("unixfs-v1-2025") == DagParams(1, 1 << 20, 1024, True)
    for bad in (
        {"cid_version": 2},
        {"chunk_size": 0},
        {"chunk_size": 4 << 20},
        {"max_links": 1},
    ):
        with pytest.raises(ConfigError):
            DagParams(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CIDv1 only"):
        DagParams.profile("unixfs-v1-2025", 0)
    with pytest.raises(ConfigError, match="unknown DAG profile"):
        DagParams.profile("fastest")


# --------------------------------------------------------------------------- strings

digests = st.binary(min_size=32, max_size=32)
kinds = st.sampled_from([(0, CODEC_DAG_PB), (1, CODEC_DAG_PB), (1, CODEC_RAW)])


@given(digest=digests, kind=kinds)
def test_parse_cid_roundtrip_and_agrees_with_py_cid(digest: bytes, kind: tuple[int, int]) -> None:
    version, codec = kind
    binary = binary_cid(version, codec, digest)
    text = cid_to_str(binary)
    parsed = parse_cid(text)
    assert (parsed.version, parsed.codec, parsed.digest) == (version, codec, digest)
    assert parsed.multihash == b"\x12\x20" + digest
    assert str(parsed) == text
    assert cid_to_bytes(text) == binary == bytes(parsed)
    assert cid_from_bytes(binary) == parsed
    other = pycid.from_string(text)
    assert other.version == version and bytes(other.multihash) == parsed.multihash
    if version == 1:
        assert text.startswith("bafy" if codec == CODEC_DAG_PB else "bafk")
        assert other.encode("base32").decode() == text
        assert parse_cid("B" + text[1:].upper()) == parsed  # 'B' base32 upper
        assert parse_cid("z" + other.encode("base58btc").decode()[1:]) == parsed
        assert parse_cid("f" + binary.hex()) == parsed
    else:
        assert text.startswith("Qm") and len(text) == 46
        assert parsed.to_v1().same_block(parsed)


@pytest.mark.slow
@given(st.text(max_size=250))
def test_parse_cid_on_arbitrary_text_raises_only_invalid_cid(text: str) -> None:
    try:
        parsed = parse_cid(text)
    except InvalidCIDError:
        return
    assert isinstance(parsed, ParsedCid)


_alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@given(prefix=st.sampled_from(["b", "B", "z", "f", "Qm", "bafy", "bafk"]), body=st.text(_alnum))
def test_parse_cid_on_cid_like_text_raises_only_invalid_cid(prefix: str, body: str) -> None:
    try:
        parse_cid(prefix + body)
    except InvalidCIDError:
        pass


def _b32(raw: bytes) -> str:
    import base64

    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


GOOD_V1 = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("Qm" + "a" * 300, "too long"),
        ("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXE", "46 characters"),
        ("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiX0l", "base58"),
        ("uAXASIA", "multibase prefix"),
        ("b", "nothing after"),
        (GOOD_V1[:-1], "impossible length"),
        (GOOD_V1[:-1] + "b", "canonical"),
        (GOOD_V1.replace("k", "!", 1), "base32"),
        (_b32(b"\x01\x55\x13\x40" + bytes(64)), "hash function"),
        (_b32(b"\x01\x55\x12\x10" + bytes(16)), "digest length"),
        (_b32(b"\x01\x71\x12\x20" + bytes(32)), "codec 0x71"),
        (_b32(b"\x02\x55\x12\x20" + bytes(32)), "version 2"),
        (_b32(b"\x01\x55\x00\x05hello"), "hash function"),
        (_b32(b"\x01\x55\x12\x20" + bytes(33)), "unexpected bytes"),
        (_b32(b"\x01\x55\x12\x20" + bytes(31)), "truncated"),
        (_b32(b"\x01\xff"), "malformed"),
        ("fzz", "base16"),
    ],
)
def test_parse_cid_rejects_junk_with_clear_message(text: str, message: str) -> None:
    with pytest.raises(InvalidCIDError, match=message):
        parse_cid(text)


def test_parse_cid_rejects_non_strings_and_strips_whitespace() -> None:
    with pytest.raises(InvalidCIDError, match="string"):
        parse_cid(b"Qm...")  # type: ignore[arg-type]
    assert str(parse_cid(f"  {GOOD_V1}\n")) == GOOD_V1


def test_cid_from_bytes_rejects_trailing_bytes() -> None:
    binary = cid_to_bytes(GOOD_V1)
    with pytest.raises(InvalidCIDError, match="unexpected bytes"):
        cid_from_bytes(binary + b"\0")


# --------------------------------------------------------------------------- verification


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=5000),
    where=st.integers(min_value=0),
    params=st.sampled_from(
        [DagParams(0, chunk_size=512), DagParams(1, chunk_size=512), DagParams(1, chunk_size=8192)]
    ),
)
def test_verifier_accepts_right_data_and_rejects_flipped_byte(
    data: bytes, where: int, params: DagParams
) -> None:
    cid = cid_of_bytes(data, params=params)
    good = CidVerifier(cid, params=params)
    good.update(data)
    good.verify()
    assert good.size == len(data)
    bad = bytearray(data)
    bad[where % len(data)] ^= 0x01
    with pytest.raises(IntegrityError, match="data does not match CID"):
        verify_bytes(cid, bytes(bad), params=params)


def test_v1_verifier_accepts_both_kubo_and_v1_2025_layouts() -> None:
    data = seeded_prefix("chunk-v1-seed", 1024 * KIB + 1, 1024 * KIB + 1)
    for params in (DagParams(1), V1_2025):
        cid = cid_of_bytes(data, params=params)
        assert cid.startswith("bafybei")
        verifier = CidVerifier(cid)
        for off in range(0, len(data), 300_000):
            verifier.update(data[off : off + 300_000])
        verifier.verify()
        assert verifier.matched_params == params
    assert cid_of_bytes(data, params=DagParams(1)) != cid_of_bytes(data, params=V1_2025)


def test_raw_cid_is_sha256_of_the_bytes_and_v0_uses_kubo_defaults() -> None:
    verify_bytes("bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am", b"hello\n")
    with pytest.raises(IntegrityError, match="bafkrei"):
        verify_bytes("bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am", b"hello")
    data = pattern(CHUNK + 1)
    verify_bytes("QmP8yTqWQcb3qVoBcdE4pTUzxh9kazndg5ELrbXBmdj17M", data)
    # a v0 CID made with other chunking is not accepted by default
    other = cid_of_bytes(data, params=DagParams(0, chunk_size=CHUNK // 2))
    with pytest.raises(IntegrityError, match="v0/256KiB/174 links"):
        verify_bytes(other, data)


def test_verifier_size_limit_raises_early() -> None:
    verifier = CidVerifier("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN", max_size=10)
    verifier.update(b"hello")
    with pytest.raises(SizeLimitError, match="10 bytes"):
        verifier.update(b" world!")
    assert verifier.size == 5


def test_verifier_rejects_bad_cid() -> None:
    with pytest.raises(InvalidCIDError):
        CidVerifier("not-a-cid")


# --------------------------------------------------------------------------- CLI


def test_cli_prints_cid_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    cases = [
        ([], "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"),
        (["--cid-version", "1"], "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am"),
        (["--profile", "unixfs-v1-2025"], cid_of_bytes(b"hello\n", params=V1_2025)),
    ]
    for extra, expected in cases:
        assert main(["cid", str(path), *extra]) == 0
        out, err = capsys.readouterr()
        assert out == expected + "\n"
        assert err == ""


def test_cli_missing_file_and_bad_combination_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cid", str(tmp_path / "missing.bin")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "does not exist" in err
    assert main(["cid", str(tmp_path)]) == 1
    assert "not a regular file" in capsys.readouterr().err
    (tmp_path / "f").write_bytes(b"x")
    assert (
        main(["cid", str(tmp_path / "f"), "--profile", "unixfs-v1-2025", "--cid-version", "0"]) == 1
    )
    assert "CIDv1 only" in capsys.readouterr().err


def test_cli_progress_bar_path_gives_the_same_cid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from fedstore.cli import cid_cmd

    path = tmp_path / "big.bin"
    data = pattern(3 * CHUNK + 5)
    path.write_bytes(data)
    monkeypatch.setattr(cid_cmd, "PROGRESS_THRESHOLD", CHUNK)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["cid", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out == cid_of_bytes(data) + "\n"  # the bar goes to stderr, stdout stays clean
