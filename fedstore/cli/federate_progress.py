"""How ``fedstore aggregate`` and ``fedstore train`` show progress.

Three forms of the same events (the round events of
:mod:`fedstore.federation.events`, plus ``ready`` and ``done``):

* on a terminal, Rich: one coloured line per event, with a spinner line below
  saying what the node is waiting for;
* otherwise (a pipe, a log file, a service manager), one plain line per event;
* with ``--log-json``, one JSON object per line on stdout, ``{"event": KIND,
  ...}`` with every field of the event (the form ``fedstore simulate``'s
  worker processes print).

Events this module does not know (newer kinds) still print: their kind and
fields. Lines never carry secrets: events hold round numbers, CIDs, peer
ids, sizes and metrics only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedstore.console import clean, metric_text, size_text
from fedstore.console import short_id as short

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from fedstore.federation.events import Event

__all__ = ["Progress", "describe"]


def _metrics(values: Mapping[str, Any], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{k} {metric_text(float(v))}" for k, v in sorted(values.items()))


def describe(ev: Mapping[str, Any]) -> str:
    """One line for event ``ev`` (a dict with ``event`` = its kind)."""
    kind = str(ev.get("event", ""))
    r = ev.get("round")
    if kind == "ready":
        who = f"{ev.get('role', 'node')} {short(str(ev.get('peer_id', '')))}"
        return f"{who} listening on {ev['addr']}"
    if kind == "stopped":
        head = ev.get("local_head")
        held = f"round {head[0]}" if head else "no round yet"
        return f"{ev.get('role', 'node')} stopped by a signal (catalog holds {held})"
    if kind == "exported":
        return f"final model written to {ev['path']} ({ev['parameters']:,} parameters)"
    if kind == "round_opened":
        again = f" (attempt {ev['attempt']})" if int(ev.get("attempt", 1)) > 1 else ""
        return (
            f"round {r}: open{again}, waiting for {ev['quorum']} update(s) "
            f"on base {short(str(ev['base_cid']))}"
        )
    if kind == "update_accepted":
        how = " by CID" if ev.get("by_cid") else ""
        return (
            f"round {r}: update from {short(str(ev['sender']))}{how} ({ev['num_samples']} samples)"
        )
    if kind == "round_closed":
        parts = [f"round {r}: closed with {len(ev.get('participants') or [])} update(s)"]
        if ev.get("metrics"):
            parts.append(_metrics(ev["metrics"]))
        if ev.get("trainer_metrics"):
            parts.append(_metrics(ev["trainer_metrics"], "trainers' "))
        parts.append(f"CID {ev['cid']} ({size_text(float(ev['size']))}) in {ev['seconds']:.1f} s")
        return ", ".join(parts) + (" (partial)" if ev.get("partial") else "")
    if kind == "round_failed":
        return (
            f"round {r}: attempt {ev['attempt']} failed with {ev['received']}/{ev['needed']} "
            f"update(s): {ev['reason']}"
        )
    if kind == "trainer_synced":
        return f"round {r}: global model {ev['cid']} fetched and verified"
    if kind == "trainer_updated":
        how = "by CID" if ev.get("by_cid") else "inline"
        line = f"round {r}: trained on {ev['num_samples']} samples"
        if ev.get("metrics"):
            line += f", {_metrics(ev['metrics'])}"
        return (
            f"{line}; sent a {size_text(float(ev['size']))} {ev.get('encoding', '')} update {how}"
        )
    fields = ", ".join(f"{k}={v}" for k, v in sorted(ev.items()) if k != "event")
    return f"{kind}: {fields}" if fields else kind


class Progress:
    """Progress output of one role (see the module docstring).

    ``mode`` is ``rich``, ``plain`` or ``json``. Use as a context manager:
    the Rich spinner runs inside it.
    """

    def __init__(self, mode: str, role: str, console: Console | None = None) -> None:
        self.mode = mode
        self.role = role
        self._console = console
        self._status: Status | None = None

    @classmethod
    def choose(cls, *, json_lines: bool, plain: bool, role: str) -> Progress:
        """JSON lines if asked, Rich on a terminal (unless ``plain``), else plain lines."""
        if json_lines:
            return cls("json", role)
        from fedstore.console import console

        con = console(soft_wrap=True)
        return cls("rich" if con.is_terminal and not plain else "plain", role, con)

    def __enter__(self) -> Progress:
        if self.mode == "rich" and self._console is not None:
            self._status = self._console.status("starting the node…")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(None, None, None)
            self._status = None

    # -- output ----------------------------------------------------------------------------
    def emit(self, ev: Mapping[str, Any]) -> None:
        """Show one event dict (``event`` = its kind)."""
        if self.mode == "json":
            sys.stdout.write(json.dumps(dict(ev), sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
            return
        self.say(describe(ev), style=_STYLES.get(str(ev.get("event")), ""))
        self._waiting(ev)

    def say(self, line: str, *, style: str = "") -> None:
        """A line for people (nothing in JSON mode: machines read the events)."""
        if self.mode == "json":
            return
        assert self._console is not None
        from rich.text import Text

        for part in line.split("\n"):  # peers' text never drives the terminal
            text = Text(clean(part), style=style if self.mode == "rich" else "")
            self._console.print(text, highlight=False, soft_wrap=True)

    def event(self, ev: Event) -> None:
        """An :data:`~fedstore.federation.events.EventSink`."""
        from fedstore.federation.events import event_dict

        d = event_dict(ev)
        d["event"] = d.pop("kind")
        self.emit(d)

    def _waiting(self, ev: Mapping[str, Any]) -> None:
        if self._status is None:
            return
        kind, r = ev.get("event"), ev.get("round")
        if kind == "ready":
            text = "waiting for trainers…" if self.role == "aggregator" else "waiting for a round…"
        elif kind == "round_opened":
            text = f"round {r}: collecting updates (quorum {ev['quorum']})…"
        elif kind == "trainer_synced":
            text = f"training on round {r}'s model…"
        elif kind in ("round_closed", "trainer_updated"):
            text = "waiting for the next round…"
        else:
            return
        self._status.update(text)


_STYLES = {
    "round_closed": "green",
    "round_failed": "yellow",
    "trainer_updated": "cyan",
    "ready": "bold",
}
