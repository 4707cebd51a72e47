"""Round numbers: the one grammar and bound every layer uses.

A round is an integer from 0 to :data:`MAX_ROUND`: the highest round an
announcement (``CID:<round>:<cid>``), a federation message, the store and the
catalog accept, so no layer can hold a round the others could not carry. A
utility module below the layers (no imports): the wire codecs
(:mod:`fedstore.p2p.messages`, :mod:`fedstore.federation.messages`), the
store and the CLI all take the bound from here.
"""

from __future__ import annotations

__all__ = ["MAX_ROUND", "parse_round", "validate_round"]

#: Highest round number accepted anywhere (fits SQLite's INTEGER easily).
MAX_ROUND = 10**12


def validate_round(value: int) -> int:
    """Return *value* if it is a valid round number (0..MAX_ROUND), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ROUND:
        raise ValueError(f"round must be an integer from 0 to {MAX_ROUND}, got {value!r}")
    return value


def parse_round(text: str) -> int:
    """A round number typed by a person (CLI flag, prompt command): ASCII decimal digits
    only, 0 to :data:`MAX_ROUND`, the rounds an announcement can carry.

    ``int()`` alone would take ``"٣"`` (an Arabic-Indic three), ``"+3"``,
    ``"1_000"`` or ``" 3 "``; those raise ``ValueError`` here, as does a
    round the wire format cannot announce. Leading zeros are accepted.
    """
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"a round is a whole number written with the digits 0-9, got {text!r:.40}")
    if len(text.lstrip("0")) > len(str(MAX_ROUND)) or int(text) > MAX_ROUND:
        raise ValueError(f"round {text:.40} is above {MAX_ROUND}, the highest round peers accept")
    return int(text)
