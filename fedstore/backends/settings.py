"""Declared settings: what a component reads, its default, its meaning, and its valid range.

The core declares its own settings (:data:`fedstore.config.CORE_SETTINGS`)
and every backend plugin declares its own in a ``settings`` class attribute::

    from fedstore.backends import Setting, StorageBackend

    class MyBackend(StorageBackend):
        name = "mystore"
        settings = (
            Setting("MYSTORE_URL", "https://api.example", "service base URL", key="url"),
            Setting("MYSTORE_TOKEN", help="API token", secret=True, key="token"),
            Setting("MYSTORE_TIMEOUT", "30", "seconds per request", kind="duration",
                    minimum=0.1, key="timeout"),
        )

        @classmethod
        def create(cls, settings, ctx):
            timeout = cls.settings[2].number(settings)   # validated, or ConfigError
            ...

From these declarations fedstore builds ``.env.example``, ``fedstore
backends``, ``fedstore config show``, the ``[mystore]`` table of
``fedstore.toml`` (``[mystore] url = "..."`` sets ``MYSTORE_URL``) and the
"unknown key, did you mean ..." warnings; and it validates every numeric
setting of a backend before constructing it.

A setting's value is text (as in the environment); "" means unset, and an
unset setting has its declared default. The typed readers
(:meth:`Setting.integer`, :meth:`Setting.number`, :meth:`Setting.flag`)
refuse malformed, non-finite and out-of-range values with a one-line
:class:`~fedstore.errors.ConfigError` naming the setting (never quoting a
secret's value).

This module imports nothing heavier than the standard library, so the
configuration code can use it without loading any backend.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fedstore.errors import ConfigError

__all__ = ["Setting", "SettingKind"]

#: How a setting's text is read. ``duration`` is seconds as a float (a trailing
#: ``s`` is accepted: ``30s``).
SettingKind = Literal["text", "int", "float", "duration", "bool", "path"]

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_NUMERIC: frozenset[str] = frozenset({"int", "float", "duration"})


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting a component reads (see the module docstring).

    * *name*: the environment-style name, upper case (``FEDSTORE_KUBO_API``).
    * *default*: its value when unset, as text ("" = no default).
    * *help*: one line for ``.env.example``, ``fedstore backends`` and
      ``fedstore config show``.
    * *secret*: the value is a credential: shown as ``***``, never logged,
      never quoted in errors.
    * *key*: its key inside the owner's ``fedstore.toml`` table (``[kubo]
      api``); "" derives it from *name* (see :meth:`toml_key`).
    * *aliases*: older names read when *name* is not set anywhere.
    * *kind*, *minimum*, *maximum*, *off*, *choices*: how the value is checked.
      A numeric value must be finite and within ``[minimum, maximum]``, or
      equal *off* (a value outside the range that switches the feature off,
      e.g. 0).
    """

    name: str
    default: str = ""
    help: str = ""
    secret: bool = False
    key: str = ""
    aliases: tuple[str, ...] = ()
    kind: SettingKind = "text"
    minimum: float | None = None
    maximum: float | None = None
    off: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (self.name, *self.aliases):
            if not _NAME.match(name):
                raise ValueError(f"setting name {name!r} must be upper case: A-Z, 0-9, _")
        if self.key and not _KEY.match(self.key):
            raise ValueError(f"setting {self.name}: toml key {self.key!r} must be lower case")
        if self.secret and self.default:
            raise ValueError(f"setting {self.name}: a secret has no default")
        if (self.minimum is not None or self.maximum is not None or self.off is not None) and (
            self.kind not in _NUMERIC
        ):
            raise ValueError(f"setting {self.name}: a range needs a numeric kind")

    # -- names -------------------------------------------------------------------------
    @property
    def numeric(self) -> bool:
        return self.kind in _NUMERIC

    def toml_key(self, table: str) -> str:
        """The key of this setting in ``[table]``: *key*, else *name* without its prefixes.

        ``FEDSTORE_KUBO_API`` in table ``kubo`` is ``api``; ``PINATA_JWT`` in
        ``pinata`` is ``jwt``; ``FEDSTORE_ROLE`` in ``fedstore`` is ``role``.
        """
        if self.key:
            return self.key
        rest = self.name.removeprefix("FEDSTORE_")
        rest = rest.removeprefix(table.upper().replace("-", "_") + "_")
        return rest.lower()

    def describe_default(self) -> str:
        return self.default if self.default else "(unset)"

    # -- reading -----------------------------------------------------------------------
    def raw(self, settings: Mapping[str, str]) -> str:
        """The value as set (stripped), or "" when unset. No default applied."""
        value = settings.get(self.name)
        if value is None or not value.strip():
            for alias in self.aliases:
                value = settings.get(alias)
                if value is not None and value.strip():
                    break
        return (value or "").strip()

    def is_set(self, settings: Mapping[str, str]) -> bool:
        return bool(self.raw(settings))

    def text(self, settings: Mapping[str, str]) -> str:
        """The value, else the default; checked against *choices* if any."""
        value = self.raw(settings) or self.default
        if self.choices and value and value.lower() not in self.choices:
            raise ConfigError(
                f"{self.name}={self._shown(value)}: expected one of {', '.join(self.choices)}"
            )
        return value

    def flag(self, settings: Mapping[str, str]) -> bool:
        """A boolean: true/yes/on/1 or false/no/off/0 (unset: the default)."""
        value = (self.raw(settings) or self.default).lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(f"{self.name}={self._shown(value)} is not a boolean (use true or false)")

    def number(self, settings: Mapping[str, str]) -> float:
        """A finite number within the declared range (or the *off* value)."""
        text = self.raw(settings) or self.default
        if self.kind == "duration":
            text = text.removesuffix("s").rstrip()
        try:
            value = float(text)
        except ValueError:
            unit = " of seconds" if self.kind == "duration" else ""
            raise ConfigError(f"{self.name}={self._shown(text)} is not a number{unit}") from None
        if self.kind == "int" and not value.is_integer():
            raise ConfigError(f"{self.name}={self._shown(text)} is not a whole number")
        return self.check(value, text)

    def integer(self, settings: Mapping[str, str]) -> int:
        """A whole number within the declared range (``1e6`` is not accepted)."""
        text = self.raw(settings) or self.default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{self.name}={self._shown(text)} is not a whole number") from None
        self.check(float(value), text)
        return value

    def check(self, value: float, text: str | None = None) -> float:
        """Return *value* if finite and in range (or the *off* value); else ConfigError."""
        shown = self._shown(text if text is not None else f"{value:g}")
        if not math.isfinite(value):
            raise ConfigError(f"{self.name}={shown} is not a finite number")
        if self.off is not None and value == self.off:
            return value
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{self.name}={shown} {self._range_text()}")
        return value

    def validate(self, settings: Mapping[str, str]) -> None:
        """Check the current value by its kind (what the registry does before ``create``).

        An unset setting without a default has nothing to check.
        """
        if not self.raw(settings) and not self.default:
            return
        if self.kind == "int":
            self.integer(settings)
        elif self.numeric:
            self.number(settings)
        elif self.kind == "bool":
            self.flag(settings)
        else:
            self.text(settings)

    def _range_text(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            span = f"between {_num(low)} and {_num(high)}"
        elif low is not None:
            span = f"at least {_num(low)}"
        else:
            span = f"at most {_num(high)}"
        if self.off is not None:
            return f"must be {_num(self.off)} (off) or {span}"
        return f"must be {span}"

    def _shown(self, text: str) -> str:
        return "***" if self.secret else repr(text)


def _num(value: float | None) -> str:
    """``1000000`` rather than ``1e+06``; ``0.1`` as is."""
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
