"""Secrets never reach errors, logs or the catalog, however a service echoes them.

A server (or a proxy in front of it) that quotes the credential it was sent
may cut it short, JSON-escape it, URL-encode it, base64 it or wrap it in
HTML. The fake Kubo and Pinata servers do each of these with the credential
they really received; the oracle below looks for any 8-character run of the
secret in the resulting texts, decoded every way it could be.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from fedstore_kubo import KuboBackend
from fedstore_kubo.testing import FakeKubo
from fedstore_pinata import PinataBackend, PinataConfig
from fedstore_pinata.testing import FakePinata

from fedstore.backends import BackendChain
from fedstore.backends.http import REDACT_RUN, Redactor, RetryPolicy, Secret
from fedstore.catalog import Catalog
from fedstore.errors import FedstoreError
from fedstore.ipld.cid import cid_of_bytes
from fedstore.node.replication import replicate

KUBO_TOKEN = "kubo-Tok3n-8f2a9c41d7e6b5a0c3f1e2d4b6a8c0e1"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJyZWRhY3Rpb24tdGVzdCIsImlhdCI6MTcwMDAwMDAwMH0."
    "Qm9ndXNTaWduYXR1cmVGb3JSZWRhY3Rpb25UZXN0c09ubHk"
)


# ------------------------------------------------------------------ the oracle


def _views(text: str) -> Iterator[str]:
    yield text
    yield unquote(text)
    yield html.unescape(text)
    yield re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
    yield re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text.replace("\\\\", "\\"))
    yield re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), text)


def leaked(text: str, secret: str) -> str | None:
    """A piece of *secret* readable in *text* (plainly, escaped or base64), else None."""
    grams = {secret[i : i + REDACT_RUN] for i in range(len(secret) - REDACT_RUN + 1)}
    for view in _views(text):
        for i in range(len(view) - REDACT_RUN + 1):
            if view[i : i + REDACT_RUN] in grams:
                return view[i : i + REDACT_RUN]
    raw = secret.encode()
    for k in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            form = enc(raw[k:]).decode().rstrip("=")
            for i in range(0, len(form) - 12, 4):
                if form[i : i + 12] in text:
                    return form[i : i + 12]
    return None


# ------------------------------------------------------------------ mangled echoes


def _u_escape(s: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in s)


def _pct(s: str) -> str:
    return "".join(f"%{b:02X}" for b in s.encode())


def _json_error(message_raw: str) -> str:
    """A Kubo/Pinata-shaped JSON error whose message is *message_raw* as written in the body."""
    return (
        '{"Message": "' + message_raw + '", "Code": 0, "Type": "error", '
        '"error": {"reason": "BAD", "details": "' + message_raw + '"}}'
    )


#: name -> body built from the Authorization header value the server received
MANGLES: dict[str, Callable[[str], str]] = {
    "whole": lambda cred: _json_error(f"invalid credential {cred}"),
    "minus last 3": lambda cred: _json_error(f"invalid credential {cred[:-3]}"),
    "middle only": lambda cred: _json_error(f"bad part {cred[12:-9]} here"),
    "json \\u escaped": lambda cred: _json_error("token " + _u_escape(cred)),
    "json \\u escaped, minus last 3": lambda cred: _json_error("token " + _u_escape(cred[:-3])),
    "json-escaped twice": lambda cred: _json_error(
        "token " + _u_escape(cred).replace("\\", "\\\\")
    ),
    "url-encoded": lambda cred: _json_error("see /login?next=%2F&auth=" + _pct(cred)),
    "base64": lambda cred: _json_error("basic " + base64.b64encode(cred.encode()).decode()),
    "base64 of a slice": lambda cred: _json_error(
        "basic " + base64.urlsafe_b64encode(cred[5:-4].encode()).decode()
    ),
    "html entities": lambda cred: (
        "<html><body>You sent " + "".join(f"&#{ord(c)};" for c in cred[:-2]) + "</body></html>"
    ),
    "wrapped lines": lambda cred: "\n".join(cred[i : i + 20] for i in range(0, len(cred), 20)),
}


@pytest.mark.parametrize("mangle", list(MANGLES), ids=list(MANGLES))
def test_redactor_hides_mangled_echoes(mangle: str) -> None:
    for secret in (KUBO_TOKEN, JWT):
        body = MANGLES[mangle](f"Bearer {secret}")
        assert leaked(body, secret)  # the oracle sees the echo...
        out = Redactor([Secret(secret)])(body)
        assert leaked(out, secret) is None, out  # ...and nothing of it after redaction
        assert "***" in out


def test_redactor_leaves_ordinary_text_alone() -> None:
    r = Redactor([Secret(KUBO_TOKEN), Secret(JWT), "abc"])
    text = (
        "kubo: add failed (500 Internal Server Error): context deadline exceeded; "
        "cid QmNbLVc7DnQvVDWCPFGb38mJJbVjnCejQGB17U6aWAYBuZ, %20 \\u0041 &#65; short abc"
    )
    assert r(text) == text
    assert "Tok3n" not in repr(r)


def test_short_secrets_are_redacted_whole() -> None:
    r = Redactor(["hunter2"])
    assert r("pw hunter2 and hunter and %68%75%6E%74%65%72%32") == "pw *** and hunter and ***"


# ------------------------------------------------------------------ through real backends


async def _no_sleep(_: float) -> None:
    return None


def _assert_clean(texts: dict[str, str], secret: str) -> None:
    for where, text in texts.items():
        piece = leaked(text, secret)
        assert piece is None, f"{piece!r} of the secret in {where}: {text!r}"


async def _replicate_into_echo(tmp_path: Path, backend: object) -> tuple[str, str]:
    data = b"checkpoint bytes for the redaction test"
    path = tmp_path / "ckpt.fsck"
    path.write_bytes(data)
    cid = cid_of_bytes(data)
    catalog = Catalog.open(tmp_path / "node")
    try:
        with pytest.raises(FedstoreError) as info:
            await replicate(path, cid, BackendChain([backend]), catalog)  # type: ignore[list-item]
        stored = catalog.pins_for(cid)[0].last_error or ""
    finally:
        catalog.close()
    return str(info.value), stored


@pytest.mark.parametrize("mangle", list(MANGLES), ids=list(MANGLES))
async def test_kubo_echoes_reach_no_error_log_or_pin_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mangle: str
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeKubo(token=KUBO_TOKEN)
    fake.echo = MANGLES[mangle]
    backend = KuboBackend(
        "http://127.0.0.1:5001",
        token=KUBO_TOKEN,
        transport=fake,
        retry=RetryPolicy(attempts=2, sleep=_no_sleep),  # 500s are retried: and logged
    )
    try:
        error, pin_error = await _replicate_into_echo(tmp_path, backend)
    finally:
        await backend.aclose()
    assert fake.requests  # the server really answered
    assert pin_error
    _assert_clean({"error": error, "pins.error": pin_error, "logs": caplog.text}, KUBO_TOKEN)


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize("mangle", list(MANGLES), ids=list(MANGLES))
async def test_pinata_echoes_reach_no_error_log_or_pin_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mangle: str, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakePinata(jwt=JWT)
    fake.echo = MANGLES[mangle]
    fake.echo_status = status
    cfg = PinataConfig(
        jwt=Secret(JWT),
        api_url="https://api.pinata.test",
        upload_url="https://uploads.pinata.test",
        gateway_url="https://gw.pinata.test",
    )
    backend = PinataBackend(cfg, transport=fake, retry=RetryPolicy(attempts=2, sleep=_no_sleep))
    try:
        error, pin_error = await _replicate_into_echo(tmp_path, backend)
    finally:
        await backend.aclose()
    assert fake.requests and pin_error
    _assert_clean({"error": error, "pins.error": pin_error, "logs": caplog.text}, JWT)


def test_json_body_is_still_quoted_helpfully() -> None:
    """Redaction hides the secret, not the rest of what the service said."""
    r = Redactor([Secret(KUBO_TOKEN)])
    body = json.dumps({"Message": f"token {KUBO_TOKEN[:-3]} expired at noon"})
    out = r(body)
    assert "expired at noon" in out and leaked(out, KUBO_TOKEN) is None
