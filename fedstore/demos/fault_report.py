"""The outcome of a fault run: ``summary.json``, ``summary.md``, the targets and the exit status.

:func:`fault_summary` turns what the run saw (:class:`~fedstore.demos.fault_run.FaultState`)
and the clean run (:mod:`fedstore.demos.fault_clean`) into one JSON-ready
document: who aggregated each round, takeovers, rejected updates and dropped
messages by reason, refused global models (both CIDs), what the intruder
sent and what of it was aggregated, final accuracy against the clean run,
and the targets, each measured and judged. The run survived as designed
(exit 0) when every target holds; otherwise the first missed target is the
one-line reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedstore.demos.faults import CRASH, INTRUDER, LIE, POISON, POISON_FACTOR

if TYPE_CHECKING:
    from fedstore.demos.fault_clean import CleanRun
    from fedstore.demos.fault_run import FaultState

__all__ = ["MAX_POISON_GAP", "fault_summary", "write_fault_report"]

#: the poisoned run's primary metric may be at most this far below the clean run's
MAX_POISON_GAP = 0.03

CLEAN_HOW = (
    "in-process: the same manifest, member identities, app, data split, seed and strategy, "
    "no fault, through the same round protocol over fedstore's in-memory network "
    "(fedstore.federation.fake), run right after the fault run"
)


def _target(name: str, target: str, ok: bool, measured: str) -> dict[str, Any]:
    return {"name": name, "target": target, "ok": bool(ok), "measured": measured}


def _same_weights(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    if not a or not b:
        return None
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _members(state: FaultState) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in state.plan.procs.values():
        proc = state.demo.procs[p.name]
        done = proc.done or {}
        head = done.get("local_head")
        out[p.name] = {
            "peer_id": p.peer_id,
            "addr": p.addr,
            "role": p.role,
            "member": p.role != "intruder",
            # the liar and the intruder (a poisoned trainer is a live member all the same)
            "hostile": p.name in state.plan.hostile(),
            "poisoned": p.name == state.plan.poisoned,
            "killed": bool(state.killed and state.killed["name"] == p.name),
            "returncode": proc.returncode,
            "status": done.get("status"),
            "final_round": done.get("final_round"),
            "final_cid": done.get("final_cid"),
            "local_head": head[1] if isinstance(head, list) and len(head) == 2 else None,
            "reason": done.get("reason") or ("" if done else proc.detail),
        }
    return out


def _rounds(state: FaultState) -> list[dict[str, Any]]:
    rows = []
    for r in state.demo.rounds:
        # the same updates give the same CID whoever aggregates: when a standby took the
        # round over, its closing is the one to report (the crashed opener may have closed
        # it too, an instant before the kill, and then died with the only copy); else a
        # live member's closing before a killed one's
        made_by = [c for c in state.closed if c["cid"] == r.cid]
        live = set(state.live_honest())
        made = next((c for c in made_by if c["takeover"]), None) or next(
            (c for c in made_by if c["aggregator"] in live), made_by[0]
        )
        took = any(t["round"] == r.round and t["by"] == made["aggregator"] for t in state.takeovers)
        rows.append(
            {
                "round": r.round,
                "cid": r.cid,
                "aggregator": made["aggregator"],
                "takeover": made["takeover"] or took,
                "participants": list(r.participants),
                "metrics": dict(r.metrics),
            }
        )
    return rows


def _sum(dicts: list[Mapping[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        for k, v in d.items():
            total[str(k)] += int(v)
    return dict(sorted(total.items()))


def fault_summary(
    state: FaultState,
    clean: CleanRun | None,
    final_arrays: Mapping[str, Any],
    wall: float,
) -> dict[str, Any]:
    """The fault run's summary document, targets judged (``ok``, ``reason``)."""
    from fedstore.demos.federation_state import primary_metric

    args, plan = state.demo.args, state.plan
    members = _members(state)
    live = state.live_honest()
    rounds = _rounds(state)
    metric = primary_metric({k for r in rounds for k in r["metrics"]}) or "accuracy"
    finals = {members[n]["final_cid"] for n in live}
    final_cid = next(iter(finals)) if len(finals) == 1 else ""
    final_row = rounds[-1] if rounds and rounds[-1]["cid"] == final_cid else None
    final_value = final_row["metrics"].get(metric) if final_row else None
    clean_value = clean.metrics.get(metric) if clean and clean.status == "complete" else None
    gap = None if final_value is None or clean_value is None else clean_value - final_value
    dones = [state.demo.procs[n].done or {} for n in state.honest()]
    agg_dones = [
        d for n, d in zip(state.honest(), dones, strict=True) if plan.procs[n].role == "aggregator"
    ]
    doc: dict[str, Any] = {
        "command": state.demo.command,
        "app": state.demo.app,
        "faults": [f.text for f in plan.faults.values()],
        "federation": {
            "manifest_cid": plan.signed.cid,
            "manifest": str(plan.manifest_path),
            "owner_key": str(plan.owner_dir / "identity.key"),
            "aggregation": plan.signed.manifest.aggregation,
            "quorum": plan.signed.manifest.quorum,
        },
        "config": {
            "rounds": args.rounds,
            "trainers": args.trainers,
            "aggregators": args.aggregators,
            "strategy": args.strategy,
            "strategy_settings": dict(plan.signed.manifest.strategy_settings),
            "round_timeout": args.round_timeout,
            "update_encoding": args.update_encoding,
            "app_config": dict(args.app_config_values),
        },
        "members": members,
        "rounds": rounds,
        "takeovers": state.takeovers,
        "rejected_updates": _sum([d.get("rejections", {}) for d in agg_dones]),
        "dropped_messages": _sum(
            [d.get("dropped", {}) for d in dones] + [d.get("node_dropped", {}) for d in dones]
        ),
        "refused_models": _refusals(state),
        "final": {
            "cid": final_cid,
            "round": final_row["round"] if final_row else None,
            "members_on_it": sorted(
                n
                for n in live
                if members[n]["final_cid"] == final_cid and members[n]["local_head"] == final_cid
            ),
            "metric": metric,
            "value": final_value,
            "metrics": final_row["metrics"] if final_row else {},
        },
        "clean_run": {
            "how": CLEAN_HOW,
            "status": clean.status if clean else "not run",
            "value": clean_value,
            "metrics": clean.metrics if clean else {},
            "seconds": round(clean.seconds, 2) if clean else None,
            "reason": clean.reason if clean else "",
            "same_weights": _same_weights(final_arrays, clean.arrays) if clean else None,
        },
        "gap_to_clean": gap,
        "wall_seconds": round(wall, 2),
    }
    targets = [_survived(state, members, live, final_cid, rounds)]
    if CRASH in plan.faults:
        doc["crash"], t = _crash(state)
        targets.append(t)
    if INTRUDER in plan.faults:
        doc["intruder"], t = _intruder(state, rounds)
        targets.append(t)
    if POISON in plan.faults:
        doc["poison"] = {
            "trainer": plan.poisoned,
            "factor": POISON_FACTOR,
            "rounds_admitted": sum(plan.poisoned in r["participants"] for r in rounds),
        }
        ok = gap is not None and gap <= MAX_POISON_GAP
        measured = (
            f"{metric} {final_value:.4f} vs clean {clean_value:.4f} (gap {gap:+.4f})"
            if gap is not None and final_value is not None and clean_value is not None
            else f"no comparison ({doc['clean_run']['reason'] or 'no final model'})"
        )
        targets.append(
            _target(
                POISON,
                f"final {metric} within {MAX_POISON_GAP} of the clean run ({args.strategy})",
                ok,
                measured,
            )
        )
    if LIE in plan.faults:
        doc["lie"], t = _lie(state, rounds)
        targets.append(t)
    doc["targets"] = targets
    missed = [t for t in targets if not t["ok"]]
    doc["ok"] = not missed
    doc["reason"] = f"{missed[0]['name']}: {missed[0]['measured']}" if missed else ""
    return doc


def _survived(
    state: FaultState,
    members: dict[str, dict[str, Any]],
    live: list[str],
    final_cid: str,
    rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    want = state.demo.args.rounds
    bad = [
        n
        for n in live
        if members[n]["returncode"] != 0
        or members[n]["status"] != "complete"
        or members[n]["final_round"] != want
        or members[n]["local_head"] != members[n]["final_cid"]
    ]
    if bad:
        m = members[bad[0]]
        measured = (
            f"{bad[0]}: status {m['status']}, round {m['final_round']}, exit "
            f"{m['returncode']}" + (f" ({m['reason']})" if m["reason"] else "")
        )
    elif not final_cid:
        measured = "live members ended on different final CIDs"
    else:
        measured = f"{len(live)} live members on {final_cid} after round {want}"
    ok = not bad and bool(final_cid) and len(rounds) == want
    if ok is False and not bad and final_cid:
        measured = f"only {len(rounds)} of {want} rounds adopted"
    return _target(
        "all-rounds-one-cid",
        "every live member completes every round on the same final CID",
        ok,
        measured,
    )


def _crash(state: FaultState) -> tuple[dict[str, Any], dict[str, Any]]:
    crash = state.plan.faults[CRASH]
    timeout = float(state.demo.args.round_timeout)
    target = f"round {crash.arg}: a standby takes over in under one round deadline ({timeout:g} s)"
    if not state.killed:
        return {"round": crash.arg}, _target(
            CRASH, target, False, f"the round-{crash.arg} aggregator was never killed"
        )
    victim = state.killed["name"]
    took = [t for t in state.takeovers if t["round"] == crash.arg and t["replaced"] == victim]
    adopted = [
        a["at"]
        for n in state.live_honest()
        for a in state.adopted.get(n, [])
        if a["round"] == crash.arg
    ]
    everyone = len(
        {
            n
            for n in state.live_honest()
            for a in state.adopted.get(n, [])
            if a["round"] == crash.arg
        }
    ) == len(state.live_honest())
    cost = max(adopted) - state.killed["at"] if adopted and everyone else None
    made = [c for c in state.closed if c["round"] == crash.arg and c["aggregator"] != victim]
    info = {
        "round": crash.arg,
        "killed": victim,
        "killed_when": state.killed["when"],
        "taken_over_by": sorted({t["by"] for t in took}),
        "aggregated_by": sorted({c["aggregator"] for c in made}),
        "takeover_seconds": None if cost is None else round(cost, 2),
        "round_deadline_seconds": timeout,
    }
    if cost is None:
        measured = f"round {crash.arg} was not adopted by every live member after the kill"
    elif not took:
        measured = f"no takeover from {victim} was reported"
    else:
        measured = (
            f"{victim} killed; {', '.join(info['aggregated_by']) or '?'} took over; every "
            f"live member held round {crash.arg} {cost:.2f} s after the kill"
        )
    ok = cost is not None and bool(took) and cost < timeout
    return info, _target(CRASH, target, ok, measured)


def _intruder(
    state: FaultState, rounds: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    name = state.plan.intruder or "intruder"
    aggregated = sum(name in c["participants"] for c in state.closed)
    sent = state.intruder_sent.get("updates", 0)
    info = {
        "peer_id": state.plan.procs[name].peer_id,
        "updates_sent": sent,
        "announcements_sent": state.intruder_sent.get("announcements", 0),
        "updates_aggregated": aggregated,
    }
    measured = (
        f"{sent} updates and {info['announcements_sent']} announcements sent, "
        f"{aggregated} aggregated"
    )
    if not sent:
        measured = "the intruder sent nothing (it heard no ROUND): not exercised"
    return info, _target(
        INTRUDER, "zero intruder updates aggregated", sent > 0 and not aggregated, measured
    )


def _refusals(state: FaultState) -> list[dict[str, Any]]:
    out: dict[tuple[int, str], dict[str, Any]] = {}
    hostile = state.plan.hostile()
    for r in (r for r in state.refused if r["by"] not in hostile):
        row = out.setdefault(
            (r["round"], r["cid"]),
            {
                "round": r["round"],
                "cid": r["cid"],
                "expected": r["expected"],
                "aggregator": r["aggregator"],
                "refused_by": [],
                "reason": r["reason"],
            },
        )
        row["refused_by"].append(r["by"])
    return [out[k] for k in sorted(out)]


def _lie(state: FaultState, rounds: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    lie_round = state.plan.faults[LIE].arg
    liar = state.plan.liar or ""
    target = f"round {lie_round}: no member adopts the lie and the round is redone"
    lies = [c for c in state.closed if c["round"] == lie_round and c["aggregator"] == liar]
    if not lies:
        info = {"round": lie_round, "liar": liar}
        return info, _target(
            LIE, target, False, f"{liar} did not aggregate round {lie_round}: the lie was not told"
        )
    cid = lies[0]["cid"]
    adopted_by = sorted(
        n for n in state.honest() for a in state.adopted.get(n, []) if a["cid"] == cid
    )
    refused_by = sorted({r["by"] for r in state.refused if r["cid"] == cid})
    expected = sorted({r["expected"] for r in state.refused if r["cid"] == cid and r["expected"]})
    row = next((r for r in rounds if r["round"] == lie_round), None)
    info = {
        "round": lie_round,
        "liar": liar,
        "cid": cid,
        "expected": expected,
        "refused_by": refused_by,
        "adopted_by": adopted_by,
        "redone_by": row["aggregator"] if row and row["cid"] != cid else None,
        "redone_cid": row["cid"] if row and row["cid"] != cid else None,
    }
    ok = not adopted_by and bool(refused_by) and info["redone_by"] is not None
    if adopted_by:
        measured = f"the lie {cid} was adopted by {', '.join(adopted_by)}"
    elif not refused_by:
        measured = f"nobody refused the lie {cid}"
    elif info["redone_by"] is None:
        measured = f"round {lie_round} was not redone"
    else:
        measured = (
            f"lie {cid} refused by {len(refused_by)} members; round redone by "
            f"{info['redone_by']} as {info['redone_cid']}"
        )
    return info, _target(LIE, target, ok, measured)


def _markdown(doc: dict[str, Any]) -> str:
    out = [f"# fedstore {doc['command']} with faults: {', '.join(doc['faults'])}", ""]
    out.append(
        f"**{'survived as designed' if doc['ok'] else 'did NOT survive: ' + doc['reason']}**"
        f" ({doc['wall_seconds']} s)"
    )
    out += ["", "| target | measured | met |", "|---|---|---|"]
    out += [
        f"| {t['target']} | {t['measured']} | {'yes' if t['ok'] else 'no'} |"
        for t in doc["targets"]
    ]
    f, c = doc["final"], doc["clean_run"]
    out += [
        "",
        f"Final {f['metric']}: {_num(f['value'])}; clean run: {_num(c['value'])} "
        f"(gap {_num(doc['gap_to_clean'])}; same weights: {c['same_weights']}).",
    ]
    out += ["", f"Clean run: {c['how']}."]
    out += [
        "",
        f"| round | aggregator | takeover | participants | {f['metric']} | CID |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rounds"]:
        out.append(
            f"| {r['round']} | {r['aggregator']} | {'yes' if r['takeover'] else ''} | "
            f"{len(r['participants'])} | {_num(r['metrics'].get(f['metric']))} | "
            f"`{r['cid']}` |"
        )
    if doc["refused_models"]:
        out += ["", "Refused global models:", ""]
        out += [
            f"* round {r['round']}: `{r['cid']}` from {r['aggregator']}, recomputed "
            f"`{r['expected'] or '-'}`, refused by {', '.join(r['refused_by'])}"
            for r in doc["refused_models"]
        ]
    for title, key in (
        ("Rejected updates", "rejected_updates"),
        ("Dropped messages", "dropped_messages"),
    ):
        items = doc[key]
        text = ", ".join(f"{k} {v}" for k, v in items.items()) or "none"
        out += ["", f"{title} (by reason, all members): {text}"]
    out += [
        "",
        f"Manifest `{doc['federation']['manifest_cid']}`: {doc['federation']['manifest']}",
        "",
    ]
    return "\n".join(out)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_fault_report(out: Path, doc: dict[str, Any]) -> list[Path]:
    """Write ``summary.json`` and ``summary.md`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "summary.json", out / "summary.md"
    js.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    md.write_text(_markdown(doc))
    return [js, md]
