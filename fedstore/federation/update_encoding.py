"""Which encoding a federation's updates travel in: :class:`UpdateEncoding` and its text form.

``float32`` (the default: a lossless fedstore checkpoint of the full arrays),
``float16``, ``int8``, ``int8:BLOCK`` or ``topk:FRACTION``; what each sends
and how it is decoded is in :mod:`fedstore.federation.update_codec`. The
aggregator sends the federation's encoding in every ``ROUND``'s config under
:data:`ENCODING_CONFIG_KEY`; :func:`split_round_config` is how a trainer
reads it back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fedstore.errors import ConfigError

__all__ = [
    "ENCODING_CONFIG_KEY",
    "FLOAT32",
    "MAX_ENCODING_TEXT",
    "EncodingKind",
    "UpdateEncoding",
    "split_round_config",
]

log = logging.getLogger(__name__)

#: name of the round-config entry that tells trainers the federation's encoding
ENCODING_CONFIG_KEY = "fedstore.update_encoding"
#: longest text form of an encoding
MAX_ENCODING_TEXT = 32
_MAX_BLOCK = 1 << 24


class EncodingKind(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"
    TOPK = "topk"


@dataclass(frozen=True, slots=True)
class UpdateEncoding:
    """How a federation's updates travel; see the module docstring.

    ``block`` (int8 only): elements per scale, 0 for one scale per tensor.
    ``fraction`` (topk only): the share of each tensor's entries sent, in
    (0, 1]. :meth:`parse` reads the text form, :attr:`text` writes it
    (canonical: ``parse(e.text) == e`` and ``parse(t).text`` is one spelling).
    """

    kind: EncodingKind = EncodingKind.FLOAT32
    block: int = 0
    fraction: float = 1.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", EncodingKind(self.kind))
        except ValueError:
            raise ConfigError(f"unknown update encoding kind {self.kind!r}") from None
        if self.kind is not EncodingKind.INT8 and self.block != 0:
            raise ConfigError(f"only int8 has a block size, not {self.kind}")
        if self.kind is not EncodingKind.TOPK and self.fraction != 1.0:
            raise ConfigError(f"only topk has a fraction, not {self.kind}")
        if isinstance(self.block, bool) or not 0 <= self.block <= _MAX_BLOCK:
            raise ConfigError(f"int8 block must be 1..{_MAX_BLOCK} elements, got {self.block}")
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, int | float):
            raise ConfigError(f"topk fraction must be a number in (0, 1], got {f!r:.40}")
        if not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise ConfigError(f"topk fraction must be a number in (0, 1], got {f!r}")
        object.__setattr__(self, "fraction", float(f))

    @property
    def lossy(self) -> bool:
        return self.kind is not EncodingKind.FLOAT32

    @property
    def text(self) -> str:
        if self.kind is EncodingKind.INT8 and self.block:
            return f"int8:{self.block}"
        if self.kind is EncodingKind.TOPK:
            return f"topk:{float(self.fraction)!r}"
        return self.kind.value

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, text: str) -> UpdateEncoding:
        """``float32``, ``float16``, ``int8``, ``int8:BLOCK`` or ``topk:FRACTION``; ConfigError."""
        want = "expected float32, float16, int8, int8:BLOCK or topk:FRACTION (e.g. topk:0.05)"
        if not isinstance(text, str) or len(text) > MAX_ENCODING_TEXT:
            raise ConfigError(f"update encoding {text!r:.40}: {want}")
        name, sep, arg = text.strip().lower().partition(":")
        try:
            kind = EncodingKind(name)
        except ValueError:
            raise ConfigError(f"unknown update encoding {text!r}: {want}") from None
        if kind is EncodingKind.TOPK:
            if not sep:
                raise ConfigError(f"topk needs a fraction, e.g. topk:0.05 ({want})")
            try:
                return cls(kind, fraction=float(arg))
            except ValueError:
                raise ConfigError(f"topk fraction {arg!r} is not a number") from None
        if kind is EncodingKind.INT8 and sep:
            if not arg.isdigit():
                raise ConfigError(f"int8 block {arg!r} is not a whole number of elements")
            block = int(arg)
            if block < 1:
                raise ConfigError("int8 block must be at least 1 element (int8 alone: per tensor)")
            return cls(kind, block=block)
        if sep:
            raise ConfigError(f"update encoding {kind.value} takes no parameter ({want})")
        return cls(kind)


FLOAT32 = UpdateEncoding()


def split_round_config(
    config: Mapping[str, str | int | float],
) -> tuple[UpdateEncoding, dict[str, str | int | float]]:
    """The update encoding a ROUND's config asks for, and the config without that entry.

    No entry means float32. An entry this fedstore cannot read (a newer
    encoding, a bad value) also gives float32, which every aggregator
    accepts, with a warning.
    """
    rest = {k: v for k, v in config.items() if k != ENCODING_CONFIG_KEY}
    text = config.get(ENCODING_CONFIG_KEY)
    if text is None:
        return FLOAT32, rest
    try:
        if not isinstance(text, str):
            raise ConfigError(f"{ENCODING_CONFIG_KEY} must be text, got {text!r:.40}")
        return UpdateEncoding.parse(text), rest
    except ConfigError as exc:
        log.warning("sending float32 updates: the round's update encoding is unusable: %s", exc)
        return FLOAT32, rest
