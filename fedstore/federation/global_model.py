"""A round's global model: computed from the admitted updates, described in its metadata.

:func:`aggregate_round` is the one deterministic step from a round's admitted
updates to its global checkpoint (arrays + metadata, plus the strategy's
state blob). The aggregator runs it; any peer holding the same updates, base
model and state can run it again and get the same bytes, hence the same CID
(:func:`encode_global`). Nothing here does I/O.

Metadata of a global checkpoint (all values strings)::

    fedstore.round            the round number
    fedstore.base_cid         the global model it started from
    fedstore.participants     the senders aggregated, comma-separated, sorted
    fedstore.num_samples      their total sample count
    fedstore.strategy         the strategy's registered name
    fedstore.strategy.settings  canonical JSON of its settings (if any)
    fedstore.strategy.state   canonical JSON of its state (if any):
                              {"values": {...}, "arrays": CID, "size": bytes}
    fedstore.round_config     canonical JSON of the config sent to trainers (if any)

and, in a federation with a manifest (:class:`Binding`)::

    fedstore.manifest         the manifest's CID
    fedstore.session          the run's session id
    fedstore.updates          canonical JSON list of [sender, payload CID, num_samples,
                              sender's signature (, lossy encoding)] per aggregated
                              update, sorted by sender

plus the caller's own extra keys (``AggregatorSettings.metadata``). State
arrays live in a separate checkpoint-format blob (:func:`encode_state`)
stored through the backend chain under the CIDv1 the metadata names, so a
restarted aggregator (:func:`read_strategy_record` + :func:`decode_state`)
continues from exactly the state the last round produced.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedstore.errors import FormatError, StrategyError
from fedstore.federation.strategies.base import (
    ConfigValue,
    Failure,
    NDArray,
    RoundConfig,
    RoundContext,
    Strategy,
    StrategyState,
    Update,
)
from fedstore.federation.validation import ModelSpec

__all__ = [
    "BASE_CID_KEY",
    "CONFIG_KEY",
    "MANIFEST_KEY",
    "OWN_KEYS",
    "SESSION_KEY",
    "UPDATES_KEY",
    "Binding",
    "UpdateRef",
    "PARTICIPANTS_KEY",
    "ROUND_KEY",
    "SAMPLES_KEY",
    "SETTINGS_KEY",
    "STATE_CID_VERSION",
    "STATE_KEY",
    "STRATEGY_KEY",
    "RoundOutcome",
    "StrategyRecord",
    "aggregate_round",
    "canonical_json",
    "decode_state",
    "encode_global",
    "encode_state",
    "read_strategy_record",
    "read_update_refs",
    "round_zero_metadata",
]

ROUND_KEY = "fedstore.round"
BASE_CID_KEY = "fedstore.base_cid"
PARTICIPANTS_KEY = "fedstore.participants"
SAMPLES_KEY = "fedstore.num_samples"
STRATEGY_KEY = "fedstore.strategy"
SETTINGS_KEY = "fedstore.strategy.settings"
STATE_KEY = "fedstore.strategy.state"
CONFIG_KEY = "fedstore.round_config"
MANIFEST_KEY = "fedstore.manifest"
SESSION_KEY = "fedstore.session"
UPDATES_KEY = "fedstore.updates"
#: every key :func:`aggregate_round` writes itself (the rest are the caller's extras)
OWN_KEYS = frozenset(
    {
        ROUND_KEY,
        BASE_CID_KEY,
        PARTICIPANTS_KEY,
        SAMPLES_KEY,
        STRATEGY_KEY,
        SETTINGS_KEY,
        STATE_KEY,
        CONFIG_KEY,
        MANIFEST_KEY,
        SESSION_KEY,
        UPDATES_KEY,
    }
)
#: checkpoints written before strategies had their own key named them here
_LEGACY_STRATEGY_KEY = "fedstore.aggregator"
#: state blobs are addressed by CIDv1, like every blob the federation stores
STATE_CID_VERSION = 1
_STATE_OF = "fedstore.state_of"


def canonical_json(value: Mapping[str, object]) -> str:
    """Sorted keys, no whitespace, ASCII, no NaN: one text per value, in any process."""
    return json.dumps(
        dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


@dataclass(frozen=True, slots=True)
class Binding:
    """The federation (manifest CID) and run (session id) a global model belongs to."""

    manifest: str
    session: str


@dataclass(frozen=True, slots=True)
class UpdateRef:
    """How a global checkpoint lists one aggregated update: enough to fetch and check it."""

    sender: str
    payload_cid: str
    num_samples: int
    #: the sender's signature over its update claim, base64
    sig: str
    #: the payload's lossy encoding relative to the base model (None: float32 checkpoint)
    encoding: str | None = None

    def entry(self) -> list[object]:
        entry: list[object] = [self.sender, self.payload_cid, self.num_samples, self.sig]
        if self.encoding is not None:
            entry.append(self.encoding)
        return entry


def round_zero_metadata(binding: Binding | None, extra: Mapping[str, str]) -> dict[str, str]:
    """The metadata of a federation's starting checkpoint (round 0)."""
    meta = dict(extra)
    meta[ROUND_KEY] = "0"
    if binding is not None:
        meta[MANIFEST_KEY] = binding.manifest
        meta[SESSION_KEY] = binding.session
    return meta


def read_update_refs(metadata: Mapping[str, str]) -> list[UpdateRef]:
    """The updates a federated global checkpoint lists (FormatError if malformed)."""
    text = metadata.get(UPDATES_KEY)
    if text is None:
        raise FormatError(f"checkpoint metadata has no {UPDATES_KEY}")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"checkpoint metadata {UPDATES_KEY} is not JSON: {exc}") from exc
    if not isinstance(value, list) or not value or len(value) > 100_000:
        raise FormatError(f"checkpoint metadata {UPDATES_KEY} is not a non-empty list")
    refs: list[UpdateRef] = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) not in (4, 5)
            or not all(isinstance(x, str) for x in (entry[0], entry[1], entry[3], *entry[4:]))
            or isinstance(entry[2], bool)
            or not isinstance(entry[2], int)
        ):
            raise FormatError(f"checkpoint metadata {UPDATES_KEY}: bad entry {entry!r:.120}")
        refs.append(UpdateRef(entry[0], entry[1], entry[2], entry[3], *entry[4:]))
    return refs


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """What :func:`aggregate_round` computed.

    ``arrays`` None: the strategy declined the round (``reason``); nothing
    else is meaningful then. Otherwise ``metadata`` is the global
    checkpoint's, ``state`` the strategy state after the round, and
    ``state_blob`` the encoded state arrays (None without any) which must be
    stored under ``state_cid`` before the checkpoint is published.
    """

    arrays: dict[str, NDArray] | None
    metadata: dict[str, str] = field(default_factory=dict)
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    strategy_metrics: Mapping[str, float] = field(default_factory=dict)
    trainer_metrics: Mapping[str, float] = field(default_factory=dict)
    state: StrategyState = field(default_factory=StrategyState)
    state_blob: bytes | None = None
    state_cid: str | None = None
    num_samples: int = 0
    participants: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StrategyRecord:
    """The strategy facts read back from a global checkpoint's metadata."""

    name: str | None
    settings: Mapping[str, ConfigValue]
    state_values: Mapping[str, ConfigValue]
    state_cid: str | None
    state_size: int


def _finite_metrics(source: str, metrics: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        f = float(v)
        if not isinstance(k, str) or not math.isfinite(f):
            raise StrategyError(f"{source} metric {k!r} is not a finite number: {v!r:.40}")
        out[k] = f
    return out


def encode_state(strategy: str, arrays: Mapping[str, NDArray]) -> tuple[bytes, str]:
    """The state arrays as checkpoint bytes and their CIDv1 (deterministic)."""
    from fedstore.format import encode
    from fedstore.ipld.cid import cid_of_bytes

    data = encode(arrays, {_STATE_OF: strategy})
    return data, cid_of_bytes(data, STATE_CID_VERSION)


def decode_state(
    record: StrategyRecord, data: bytes, *, max_decoded_size: int | None = None
) -> StrategyState:
    """The :class:`StrategyState` of ``record`` with its arrays from the blob ``data``.

    ``data`` must already be verified against ``record.state_cid`` (the
    federation's ``get_blob`` does). FormatError if it is not a state blob of
    that strategy.
    """
    from fedstore.format import decode

    ckpt = decode(data, max_decoded_size=max_decoded_size)
    if ckpt.metadata.get(_STATE_OF) != record.name:
        raise FormatError(
            f"blob {record.state_cid} is not the state of strategy {record.name!r} "
            f"(it says {ckpt.metadata.get(_STATE_OF)!r})"
        )
    return StrategyState(dict(record.state_values), dict(ckpt.arrays))


def _json_object(metadata: Mapping[str, str], key: str) -> dict[str, object]:
    text = metadata.get(key)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"checkpoint metadata {key} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FormatError(f"checkpoint metadata {key} is not a JSON object")
    return value


def _scalars(key: str, value: object) -> dict[str, ConfigValue]:
    if not isinstance(value, dict):
        raise FormatError(f"checkpoint metadata {key} must hold an object of values")
    out: dict[str, ConfigValue] = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise FormatError(f"checkpoint metadata {key}: {k!r} is not a string or number")
        out[str(k)] = v
    return out


def read_strategy_record(metadata: Mapping[str, str]) -> StrategyRecord:
    """The strategy name, settings and state reference recorded in a global checkpoint."""
    name = metadata.get(STRATEGY_KEY, metadata.get(_LEGACY_STRATEGY_KEY))
    settings = _scalars(SETTINGS_KEY, _json_object(metadata, SETTINGS_KEY))
    state = _json_object(metadata, STATE_KEY)
    values = _scalars(STATE_KEY, state.get("values", {}))
    cid = state.get("arrays")
    size = state.get("size", 0)
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise FormatError(f"checkpoint metadata {STATE_KEY}: arrays is not a CID")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FormatError(f"checkpoint metadata {STATE_KEY}: size is not a byte count")
    return StrategyRecord(name, settings, values, cid, size)


def _metadata(
    strategy: Strategy,
    round: RoundContext,
    updates: Sequence[Update],
    config: RoundConfig,
    state: StrategyState,
    state_ref: tuple[str, int] | None,
    extra: Mapping[str, str],
    binding: Binding | None,
    refs: Mapping[str, UpdateRef] | None,
) -> dict[str, str]:
    meta = {k: v for k, v in extra.items() if k not in OWN_KEYS}
    meta.update(
        {
            STRATEGY_KEY: strategy.name,
            BASE_CID_KEY: round.base_cid,
            SAMPLES_KEY: str(sum(u.num_samples for u in updates)),
            PARTICIPANTS_KEY: ",".join(sorted(u.sender for u in updates)),
            ROUND_KEY: str(round.round),
        }
    )
    settings = dict(strategy.settings())
    if settings:
        meta[SETTINGS_KEY] = canonical_json(settings)
    if config:
        meta[CONFIG_KEY] = canonical_json(config)
    if not state.empty:
        doc: dict[str, object] = {"values": dict(state.values)}
        if state_ref is not None:
            doc["arrays"], doc["size"] = state_ref
        meta[STATE_KEY] = canonical_json(doc)
    if binding is not None:
        if refs is None:
            raise ValueError("a federated round lists its updates: pass refs")
        missing = [u.sender for u in updates if u.sender not in refs]
        if missing:
            raise ValueError(f"no update reference for {', '.join(missing)}")
        meta[MANIFEST_KEY] = binding.manifest
        meta[SESSION_KEY] = binding.session
        meta[UPDATES_KEY] = json.dumps(
            [refs[u.sender].entry() for u in sorted(updates, key=lambda u: u.sender)],
            separators=(",", ":"),
            ensure_ascii=True,
        )
    return meta


def aggregate_round(
    strategy: Strategy,
    round: RoundContext,
    updates: Sequence[Update],
    failures: Sequence[Failure] = (),
    *,
    config: RoundConfig | None = None,
    extra: Mapping[str, str] | None = None,
    binding: Binding | None = None,
    refs: Mapping[str, UpdateRef] | None = None,
) -> RoundOutcome:
    """Aggregate one round with ``strategy``: arrays, metadata, metrics, state. Deterministic.

    ``config`` is what the trainers were sent (recorded in the metadata).
    In a federation with a manifest, ``binding`` names it and the run, and
    ``refs`` (by sender) how each update is listed in the checkpoint.
    The strategy's arrays are checked against the base model (names, shapes,
    dtypes, finite values): a strategy breaking that contract raises
    :class:`~fedstore.errors.StrategyError` rather than publishing a model no
    trainer could use. Pure but CPU-heavy: async callers run it in a thread.
    """
    ordered = sorted(updates, key=lambda u: u.sender)
    config = dict(config or {})
    result = strategy.aggregate(round, ordered, failures)
    if result.arrays is None:
        return RoundOutcome(None, config=config, reason=result.reason or "declined")
    problem = ModelSpec.of(round.base).problem(result.arrays)
    if problem is not None:
        raise StrategyError(
            f"strategy {strategy.name!r} produced arrays that do not fit the model: "
            f"{problem[0]}: {problem[1]}",
            strategy=strategy.name,
        )
    state = round.state if result.state is None else result.state
    blob: bytes | None = None
    cid: str | None = None
    if state.arrays:
        blob, cid = encode_state(strategy.name, state.arrays)
    meta = _metadata(
        strategy,
        round,
        ordered,
        config,
        state,
        None if cid is None or blob is None else (cid, len(blob)),
        extra or {},
        binding,
        refs,
    )
    return RoundOutcome(
        arrays=dict(result.arrays),
        metadata=meta,
        config=config,
        strategy_metrics=_finite_metrics("strategy", result.metrics),
        trainer_metrics=_finite_metrics("trainer", strategy.aggregate_metrics(ordered)),
        state=state,
        state_blob=blob,
        state_cid=cid,
        num_samples=sum(u.num_samples for u in ordered),
        participants=tuple(u.sender for u in ordered),
    )


def encode_global(outcome: RoundOutcome) -> bytes:
    """The global checkpoint's bytes (what its CID is computed over); deterministic."""
    from fedstore.format import encode

    if outcome.arrays is None:
        raise ValueError("the strategy declined this round: there is no global model")
    return encode(outcome.arrays, outcome.metadata)
