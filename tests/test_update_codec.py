"""The lossy update encodings: text forms, round trips, error feedback, a strict decoder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import numpy.typing as npt
import pytest

from fedstore.errors import ConfigError
from fedstore.federation import update_codec as uc
from fedstore.federation.update_codec import (
    ENCODING_CONFIG_KEY,
    FLOAT32,
    CodecError,
    EncodingKind,
    UpdateEncoder,
    UpdateEncoding,
    decode_update,
    encode_update,
    split_round_config,
)

Arrays = dict[str, npt.NDArray[np.generic]]
LOSSY = ["float16", "int8", "int8:100", "topk:0.1", "topk:0.01", "topk:1.0"]


def model(seed: int = 0) -> tuple[Arrays, Arrays]:
    """A base model and a trained-like update of it (small deltas, a few outliers)."""
    rng = np.random.default_rng(seed)
    base: Arrays = {
        "a.weight": rng.normal(0, 0.2, (64, 32)).astype(np.float32),
        "a.bias": np.zeros(32, np.float32),
        "b.weight": rng.normal(0, 0.3, (32, 10)).astype(np.float32),
        "b.double": rng.normal(0, 1.0, (7, 3)).astype(np.float64),
        "b.half": rng.normal(0, 1.0, (5,)).astype(np.float16),
        "steps": np.array([12, 13], np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
    }
    new: Arrays = {}
    for k, v in base.items():
        if v.dtype.kind == "f":
            d = rng.normal(0, 0.01, v.shape) * (1 + 20 * (rng.random(v.shape) < 0.01))
            new[k] = (v + d).astype(v.dtype)
        else:
            new[k] = v + 1 if v.dtype.kind == "i" else ~v
    return base, new


def enc(text: str) -> UpdateEncoding:
    return UpdateEncoding.parse(text)


# -- the encoding's text form ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "kind"),
    [
        ("float32", "float32", EncodingKind.FLOAT32),
        ("float16", "float16", EncodingKind.FLOAT16),
        (" Int8 ", "int8", EncodingKind.INT8),
        ("int8:256", "int8:256", EncodingKind.INT8),
        ("topk:0.10", "topk:0.1", EncodingKind.TOPK),
        ("topk:1", "topk:1.0", EncodingKind.TOPK),
        ("topk:1e-3", "topk:0.001", EncodingKind.TOPK),
    ],
)
def test_parse_gives_one_canonical_text(text: str, canonical: str, kind: EncodingKind) -> None:
    e = enc(text)
    assert e.kind is kind and e.text == canonical and str(e) == canonical
    assert enc(e.text) == e
    assert e.lossy == (kind is not EncodingKind.FLOAT32)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("bfloat16", "unknown update encoding"),
        ("topk", "topk needs a fraction"),
        ("topk:0", "(0, 1]"),
        ("topk:1.5", "(0, 1]"),
        ("topk:nan", "(0, 1]"),
        ("topk:abc", "not a number"),
        ("int8:0", "at least 1"),
        ("int8:-4", "whole number"),
        ("int8:99999999999", "block must be"),
        ("float16:2", "takes no parameter"),
        ("x" * 40, "expected float32"),
    ],
)
def test_bad_encodings_are_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=".*") as info:
        enc(text)
    msg = str(info.value)
    assert says in msg and "\n" not in msg


def test_only_the_right_kind_takes_a_parameter() -> None:
    with pytest.raises(ConfigError):
        UpdateEncoding(EncodingKind.FLOAT16, block=4)
    with pytest.raises(ConfigError):
        UpdateEncoding(EncodingKind.INT8, fraction=0.5)
    assert UpdateEncoding("topk", fraction=1) == enc("topk:1.0")  # type: ignore[arg-type]


def test_round_config_carries_the_encoding_apart_from_the_strategys() -> None:
    e, rest = split_round_config({ENCODING_CONFIG_KEY: "int8", "epochs": 2})
    assert e == enc("int8") and rest == {"epochs": 2}
    assert split_round_config({"lr": 0.1}) == (FLOAT32, {"lr": 0.1})
    # an encoding this version cannot read falls back to float32 (always accepted)
    assert split_round_config({ENCODING_CONFIG_KEY: "zfp:3"}) == (FLOAT32, {})
    assert split_round_config({ENCODING_CONFIG_KEY: 8}) == (FLOAT32, {})


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("text", LOSSY)
def test_decoder_gives_exactly_what_the_encoder_reconstructed(text: str) -> None:
    base, new = model()
    payload, reconstructed = encode_update(base, new, enc(text))
    decoded = decode_update(payload, base, enc(text))
    assert sorted(decoded) == sorted(base)
    for k in base:
        assert decoded[k].dtype == base[k].dtype and decoded[k].shape == base[k].shape
        assert decoded[k].tobytes() == reconstructed[k].tobytes(), k
        if base[k].dtype.kind != "f" or base[k].size == 0:  # raw: exact
            assert np.array_equal(decoded[k], new[k])


def test_float16_sends_weights_within_half_an_ulp() -> None:
    base, new = model()
    decoded = decode_update(encode_update(base, new, enc("float16"))[0], base, enc("float16"))
    for k in ("a.weight", "b.weight"):
        ref = new[k].astype(np.float16).astype(np.float32)
        assert np.array_equal(decoded[k], ref)


@pytest.mark.parametrize("block", [0, 100])
def test_int8_error_is_at_most_half_a_step(block: int) -> None:
    base, new = model()
    e = UpdateEncoding(EncodingKind.INT8, block=block)
    decoded = decode_update(encode_update(base, new, e)[0], base, e)
    delta = (new["a.weight"].astype(np.float64) - base["a.weight"]).reshape(-1)
    got = (decoded["a.weight"].astype(np.float64) - base["a.weight"]).reshape(-1)
    size = block or delta.size
    for start in range(0, delta.size, size):
        d, g = delta[start : start + size], got[start : start + size]
        step = np.abs(d).max() / 127
        # half a quantisation step, plus float32 rounding of base + delta
        assert np.abs(g - d).max() <= step / 2 + 1e-6


def test_topk_sends_exactly_the_largest_deltas() -> None:
    base, new = model()
    decoded = decode_update(encode_update(base, new, enc("topk:0.05"))[0], base, enc("topk:0.05"))
    delta = (new["a.weight"].astype(np.float64) - base["a.weight"]).reshape(-1)
    changed = np.flatnonzero(decoded["a.weight"].reshape(-1) != base["a.weight"].reshape(-1))
    k = int(np.ceil(0.05 * delta.size))
    largest = np.sort(np.argsort(-np.abs(delta), kind="stable")[:k])
    assert changed.size <= k and set(changed) <= set(largest)
    # a bias of 32 entries still sends one
    assert (decoded["a.bias"] != base["a.bias"]).sum() <= 2


def test_topk_ties_go_to_the_lowest_index() -> None:
    base = {"w": np.zeros(10, np.float32)}
    new = {"w": np.array([0, 1, 0, 1, 0, 1, 1, 0, 0, 0], np.float32)}
    out = decode_update(encode_update(base, new, enc("topk:0.2"))[0], base, enc("topk:0.2"))
    assert out["w"].tolist() == [0, 1, 0, 1, 0, 0, 0, 0, 0, 0]


def test_lossy_updates_are_much_smaller_than_float32() -> None:
    from fedstore.federation.messages import encode_tensors

    base, new = model()
    full = len(encode_tensors(new))
    sizes = {t: len(encode_update(base, new, enc(t))[0]) for t in ("float16", "int8", "topk:0.01")}
    assert sizes["float16"] < 0.6 * full
    assert sizes["int8"] < 0.35 * full
    assert sizes["topk:0.01"] < 0.1 * full


def test_values_a_lossy_form_cannot_hold_travel_raw() -> None:
    base = {"w": np.zeros(4, np.float32), "d": np.zeros(3, np.float64)}
    new = {"w": np.array([1e5, 0, 1, 2], np.float32), "d": np.array([1e300, -1e300, 0.5])}
    p16, r16 = encode_update(base, new, enc("float16"))  # 1e5 overflows float16
    assert decode_update(p16, base, enc("float16"))["w"].tolist() == [1e5, 0, 1, 2]
    ptk, _ = encode_update(base, new, enc("topk:1.0"))  # 1e300 overflows float32 values
    out = decode_update(ptk, base, enc("topk:1.0"))
    assert out["d"].tolist() == [1e300, -1e300, 0.5]
    assert np.array_equal(r16["w"], new["w"])


def test_non_finite_updates_travel_raw_so_the_aggregator_can_refuse_them() -> None:
    base, new = model()
    new["a.weight"] = new["a.weight"].copy()
    new["a.weight"][3, 4] = np.nan
    for text in ("float16", "int8", "topk:0.1"):
        out = decode_update(encode_update(base, new, enc(text))[0], base, enc(text))
        assert np.isnan(out["a.weight"][3, 4])


def test_an_update_of_another_layout_cannot_be_encoded() -> None:
    base, new = model()
    with pytest.raises(ValueError, match="names"):
        encode_update(base, {**new, "extra": np.zeros(1, np.float32)}, enc("int8"))
    with pytest.raises(ValueError, match="shape or dtype"):
        encode_update(base, {**new, "a.bias": np.zeros(33, np.float32)}, enc("int8"))
    with pytest.raises(ValueError, match="shape or dtype"):
        encode_update(base, {**new, "a.bias": np.zeros(32, np.float64)}, enc("int8"))
    with pytest.raises(ValueError, match="float32"):
        encode_update(base, new, FLOAT32)


# -- determinism -------------------------------------------------------------------------


_DIGESTS = textwrap.dedent(
    """
    import hashlib, json, sys
    sys.path.insert(0, {tests!r})
    from test_update_codec import LOSSY, model
    from fedstore.federation.update_codec import UpdateEncoder, UpdateEncoding
    out = {{}}
    for text in LOSSY:
        base, new = model(3)
        encoder = UpdateEncoder(UpdateEncoding.parse(text))
        digests = []
        for step in range(3):  # error feedback makes each payload depend on the last
            target = {{k: (v * (1 + 0.01 * step)).astype(v.dtype) for k, v in new.items()}}
            digests.append(hashlib.sha256(encoder.encode(base, target)).hexdigest())
        out[text] = digests
    print(json.dumps(out))
    """
)


def _digests_here() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for text in LOSSY:
        base, new = model(3)
        encoder = UpdateEncoder(enc(text))
        digests = []
        for step in range(3):
            target = {k: (v * (1 + 0.01 * step)).astype(v.dtype) for k, v in new.items()}
            digests.append(hashlib.sha256(encoder.encode(base, target)).hexdigest())
        out[text] = digests
    return out


def test_encoded_bytes_are_the_same_in_another_process() -> None:
    import pathlib

    here = _digests_here()
    code = _DIGESTS.format(tests=str(pathlib.Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", **_env()},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == here
    assert all(len(set(d)) == 3 for d in here.values())  # the steps differ


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}


# -- error feedback ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["topk:0.05", "int8", "float16"])
def test_error_feedback_delays_what_compression_drops_and_loses_nothing(text: str) -> None:
    base = {"w": np.zeros(200, np.float32)}
    step = {"w": np.random.default_rng(1).normal(0, 0.01, 200).astype(np.float32)}
    encoder = UpdateEncoder(enc(text))
    sent = np.zeros(200, np.float64)
    for _ in range(20):  # the same local step every round, from the same base
        payload = encoder.encode(base, step)
        sent += decode_update(payload, base, enc(text))["w"].astype(np.float64)
    # everything trained was either sent or is still held in the residual
    total = 20 * step["w"].astype(np.float64)
    assert np.allclose(sent + encoder.residual["w"], total, atol=1e-5)
    # and with top-k the residual keeps what was not sent yet, so most has been sent
    assert np.abs(encoder.residual["w"]).max() < np.abs(total).max()


def test_without_error_feedback_nothing_is_carried() -> None:
    base = {"w": np.zeros(100, np.float32)}
    step = {"w": np.linspace(-1, 1, 100).astype(np.float32)}
    encoder = UpdateEncoder(enc("topk:0.1"), error_feedback=False)
    first = encoder.encode(base, step)
    assert encoder.encode(base, step) == first and encoder.residual == {}
    fed = UpdateEncoder(enc("topk:0.1"))
    assert fed.encode(base, step) == first and fed.encode(base, step) != first


def test_residuals_reset_when_the_layout_changes_or_values_are_not_finite() -> None:
    base, new = model()
    encoder = UpdateEncoder(enc("topk:0.1"))
    encoder.encode(base, new)
    assert set(encoder.residual) == {"a.weight", "a.bias", "b.weight", "b.double", "b.half"}
    assert encoder.residual["b.double"].dtype == np.float64
    assert encoder.residual["a.weight"].dtype == np.float32
    bad = dict(new)
    bad["a.weight"] = np.full_like(new["a.weight"], np.inf)
    encoder.encode(base, bad)
    assert "a.weight" not in encoder.residual
    # another model: the old residuals do not fit and are not used
    small = {"a.weight": np.zeros((2, 2), np.float32)}
    encoder.encode(small, {"a.weight": np.ones((2, 2), np.float32)})
    assert encoder.residual["a.weight"].shape == (2, 2)


# -- the decoder is strict and bounded ---------------------------------------------------


def _payload(text: str = "int8") -> tuple[bytes, Arrays]:
    base, new = model()
    return encode_update(base, new, enc(text))[0], base


def _reason(data: bytes, base: Arrays, text: str = "int8") -> str:
    with pytest.raises(CodecError) as info:
        decode_update(data, base, enc(text))
    assert "\n" not in str(info.value)
    return info.value.reason


def _prefix_len(data: bytes) -> int:
    tlen = data[5]
    count = int.from_bytes(data[6 + tlen : 10 + tlen], "little")
    return 10 + tlen + count


def test_decoder_refuses_a_payload_of_another_encoding_or_model() -> None:
    data, base = _payload("int8")
    assert _reason(data, base, "topk:0.1") == "bad_encoding"  # text differs
    assert _reason(b"FSCK" + data[4:], base) == "bad_encoding"
    assert _reason(data[:4] + b"\x09" + data[5:], base) == "bad_encoding"  # version
    fewer = {k: v for k, v in base.items() if k != "mask"}
    assert _reason(data, fewer) == "wrong_names"
    other = {**base, "a.bias": np.zeros(31, np.float32)}  # same names, another shape
    assert _reason(data, other) == "bad_encoding"  # the body no longer matches its size
    with pytest.raises(CodecError):
        decode_update(data, base, FLOAT32)


@pytest.mark.parametrize("cut", [0, 3, 6, 12, 30, -40, -5, -1])
def test_truncated_payloads_are_refused(cut: int) -> None:
    data, base = _payload()
    assert _reason(data[:cut], base) == "bad_encoding"


def test_trailing_bytes_and_corrupt_frames_are_refused() -> None:
    data, base = _payload()
    assert _reason(data + b"\x00", base) == "bad_encoding"
    flipped = bytearray(data)
    flipped[-2] ^= 0xFF  # inside the frame's checksum
    assert _reason(bytes(flipped), base) == "bad_encoding"
    body = bytearray(data)
    body[-12] ^= 0x55  # inside the compressed body
    assert _reason(bytes(body), base) == "bad_encoding"


def test_modes_must_fit_the_encoding_and_the_tensor() -> None:
    data, base = _payload("int8")
    names = sorted(base)
    start = _prefix_len(data) - len(names)
    for name, mode, says in (
        ("steps", uc.Mode.INT8, "travel raw"),  # an integer tensor
        ("empty", uc.Mode.INT8, "travel raw"),  # an empty one
        ("a.weight", uc.Mode.F16, "not part of int8"),  # float16's mode in an int8 update
    ):
        bad = bytearray(data)
        bad[start + names.index(name)] = int(mode)
        with pytest.raises(CodecError, match=says):
            decode_update(bytes(bad), base, enc("int8"))
    bad = bytearray(data)
    bad[start] = 77
    with pytest.raises(CodecError, match="unknown mode 77"):
        decode_update(bytes(bad), base, enc("int8"))


def _crafted(text: str, base: Arrays, **override: object) -> bytes:
    """A payload whose tensors are encoded normally except the parts given per name."""
    e = enc(text)
    parts = []
    for name in sorted(base):
        b = base[name]
        one = uc._encode_tensor(e, b, b.reshape(-1).astype(np.float64) + 0.01)
        if b.dtype.kind != "f" or b.size == 0:
            one = uc._raw(b)
        if name in override:
            mode, p = override[name]  # type: ignore[misc]
            one = uc._Encoded(mode, p, b)
        parts.append(one)
    return uc._pack(e, parts)


def test_non_finite_values_and_scales_are_refused_as_non_finite() -> None:
    base = {"w": np.zeros(4, np.float32)}
    nan16 = np.array([0, np.nan, 1, 2], np.float16)
    planes = uc._planes(nan16)
    data = _crafted("float16", base, w=(uc.Mode.F16, (b"", b"", planes[:4], planes[4:])))
    assert _reason(data, base, "float16") == "non_finite"
    inf_scale = np.array([np.inf], "<f4").tobytes()
    data = _crafted("int8", base, w=(uc.Mode.INT8, (inf_scale, b"", bytes(4), b"")))
    assert _reason(data, base, "int8") == "non_finite"
    vals = uc._planes(np.array([np.nan], np.float32))
    data = _crafted("topk:0.25", base, w=(uc.Mode.TOPK_U8, (b"", b"", b"\x01", vals)))
    assert _reason(data, base, "topk:0.25") == "non_finite"


def test_out_of_range_codes_are_refused() -> None:
    base = {"w": np.zeros(4, np.float32)}
    one = np.array([1.0], "<f4").tobytes()
    data = _crafted("int8", base, w=(uc.Mode.INT8, (one, b"", b"\x80\x00\x00\x00", b"")))
    assert "-128" in str(pytest.raises(CodecError, decode_update, data, base, enc("int8")).value)
    neg = np.array([-1.0], "<f4").tobytes()
    data = _crafted("int8", base, w=(uc.Mode.INT8, (neg, b"", bytes(4), b"")))
    assert ">= 0" in str(pytest.raises(CodecError, decode_update, data, base, enc("int8")).value)
    vals = uc._planes(np.array([1.0, 2.0], np.float32))
    e = "topk:0.5"
    gaps_out = uc._planes(np.array([3, 1], np.uint8))  # indices 3, 4: 4 is out of range
    data = _crafted(e, base, w=(uc.Mode.TOPK_U8, (b"", b"", gaps_out, vals)))
    assert "out of range" in str(pytest.raises(CodecError, decode_update, data, base, enc(e)).value)
    gaps_dup = uc._planes(np.array([1, 0], np.uint8))  # indices 1, 1
    data = _crafted(e, base, w=(uc.Mode.TOPK_U8, (b"", b"", gaps_dup, vals)))
    assert "increasing" in str(pytest.raises(CodecError, decode_update, data, base, enc(e)).value)
    # a top-k tensor must carry exactly k entries: one more does not fit the body size
    three = uc._planes(np.array([0, 1, 1], np.uint8))
    vals3 = uc._planes(np.array([1.0, 2.0, 3.0], np.float32))
    data = _crafted(e, base, w=(uc.Mode.TOPK_U8, (b"", b"", three, vals3)))
    assert _reason(data, base, e) == "bad_encoding"


def test_a_frame_declaring_another_body_size_is_refused_before_decompressing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import zstandard

    import fedstore.format.zstd_frame as zf

    base = {"w": np.zeros(1000, np.float32)}
    data = encode_update(base, {"w": np.ones(1000, np.float32)}, enc("int8"))[0]
    prefix = data[: _prefix_len(data)]
    # 16 MiB of zeros compress to a few hundred bytes: a frame that would expand far past
    # the 1,004 bytes the prefix allows
    cctx = zstandard.ZstdCompressor(compression_params=zf.compression_parameters())
    bomb = cctx.compress(bytes(1 << 24))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the frame was opened for decompression")

    monkeypatch.setattr(zf, "FrameReader", never)
    with pytest.raises(CodecError, match="declares 16777216") as info:
        decode_update(prefix + bomb, base, enc("int8"))
    assert info.value.reason == "bad_encoding" and len(bomb) < 4096


def test_random_damage_is_always_a_codec_error_or_a_valid_update() -> None:
    data, base = _payload("topk:0.1")
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        if rng.random() < 0.3:
            bad = bad[: int(rng.integers(0, len(bad)))]
        try:
            out = decode_update(bytes(bad), base, enc("topk:0.1"))
        except CodecError:
            outcomes["refused"] += 1
        else:
            outcomes["ok"] += 1
            assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
                k: (v.shape, v.dtype) for k, v in base.items()
            }
    assert outcomes["refused"] > 200


# -- the UPDATE header names the encoding ------------------------------------------------


def test_update_messages_carry_their_encoding() -> None:
    from fedstore.federation.messages import MessageError, UpdateMessage, decode_message
    from fedstore.ipld.cid import cid_of_bytes

    base_cid = cid_of_bytes(b"base", 1)
    msg = UpdateMessage(3, "peer-a", 5, b"FSUE..", base_cid=base_cid, encoding="topk:0.05")
    back = decode_message(msg.encode())
    assert isinstance(back, UpdateMessage) and back.encoding == "topk:0.05"
    plain = decode_message(UpdateMessage(3, "peer-a", 5, b"x", base_cid=base_cid).encode())
    assert isinstance(plain, UpdateMessage) and plain.encoding is None
    with pytest.raises(MessageError, match="base_cid"):
        UpdateMessage(3, "peer-a", 5, b"x", encoding="int8").encode()
    for bad in ("INT8", "int8:" + "9" * 30, "", "a b", 8):
        wire = msg.encode().replace(b'"topk:0.05"', json.dumps(bad).encode())
        with pytest.raises(MessageError) as info:
            decode_message(_reheader(wire))
        assert info.value.reason == "bad_encoding"
    no_base = msg.encode().replace(b'"base_cid":"' + base_cid.encode() + b'",', b"")
    with pytest.raises(MessageError, match="base_cid") as info:
        decode_message(_reheader(no_base))
    assert info.value.reason == "bad_encoding"


def _reheader(wire: bytes) -> bytes:
    """``wire`` (a header without nested objects) with its header length fixed after an edit."""
    import struct

    end = wire.index(b"}") + 1
    header = wire[8:end]
    return wire[:6] + struct.pack(">H", len(header)) + header + wire[end:]
