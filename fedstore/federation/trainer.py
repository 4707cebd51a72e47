"""The trainer's side of the round protocol: :func:`follow_rounds`.

:func:`follow_rounds` follows one aggregator (see
:mod:`fedstore.federation.aggregator` for a round's steps): it syncs the base
model of each announced round by CID, runs ``train(arrays, round, config)``
in a worker thread with the round's config from the strategy, publishes its
update (inline or by CID) with the metrics ``train`` reported, and re-sends
it while the aggregator has not acknowledged it, until ``DONE``. When the
round's config names a lossy update encoding
(:mod:`fedstore.federation.update_codec`), the update is encoded with it
against the round's base model, with error feedback kept from one round to
the next (``TrainerSettings.error_feedback``); that config entry is not
passed to ``train``.

A training function of the older two-argument form ``train(arrays, round)``
still works: :func:`as_train_fn` wraps it (the config is then not passed) and
warns once with a :class:`FutureWarning`; support for it will be removed.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import FedstoreError
from fedstore.federation.events import (
    EventSink,
    TrainerResult,
    TrainerSynced,
    TrainerUpdated,
    noop_sink,
)
from fedstore.federation.messages import (
    MAX_HEADER_BYTES,
    MAX_METRICS,
    METRIC_NAME_RE,
    Done,
    MessageError,
    RoundOpen,
    RoundResult,
    UpdateMessage,
    decode_message,
    encode_tensors,
)
from fedstore.federation.settings import TrainerSettings
from fedstore.federation.strategies.base import RoundConfig
from fedstore.federation.transport import Arrays, FederationPeer
from fedstore.federation.update_codec import UpdateEncoder
from fedstore.federation.update_encoding import split_round_config
from fedstore.p2p.guard import DropCounters

__all__ = [
    "LegacyTrainFn",
    "TrainFn",
    "TrainOutput",
    "as_train_fn",
    "clean_metrics",
    "follow_rounds",
]

log = logging.getLogger(__name__)

NDArray = npt.NDArray[np.generic]
#: what ``train`` returns: new arrays, the number of samples trained on, metrics
TrainOutput = tuple[Mapping[str, NDArray], int, Mapping[str, float]]
#: ``train(arrays, round, config) -> (arrays, num_samples, metrics)``
TrainFn = Callable[[Arrays, int, RoundConfig], TrainOutput]
#: the deprecated two-argument form ``train(arrays, round)``
LegacyTrainFn = Callable[[Arrays, int], TrainOutput]


def _positional_arity(fn: Callable[..., object]) -> int | None:
    """How many positional arguments ``fn`` takes (None: any number, or unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def as_train_fn(train: TrainFn | LegacyTrainFn) -> TrainFn:
    """``train`` as a three-argument :data:`TrainFn`.

    A function taking ``(arrays, round, config)`` (or ``*args``) is returned
    as is. One taking only ``(arrays, round)`` is wrapped, with a
    :class:`FutureWarning`: the two-argument form is deprecated and will stop
    working in a later release; add a ``config`` parameter. Anything else is a
    :class:`TypeError`.
    """
    arity = _positional_arity(train)
    if arity is None or arity >= 3:
        return train  # type: ignore[return-value]
    if arity == 2:
        warnings.warn(
            f"train function {getattr(train, '__qualname__', train)!r} takes (arrays, round); "
            "that form is deprecated: accept the round's config too, "
            "train(arrays, round, config)",
            FutureWarning,
            stacklevel=3,
        )
        legacy: LegacyTrainFn = train  # type: ignore[assignment]

        def three(arrays: Arrays, round: int, config: RoundConfig) -> TrainOutput:
            return legacy(arrays, round)

        return three
    raise TypeError(
        f"train function {train!r} must take (arrays, round, config), it takes {arity} argument(s)"
    )


async def follow_rounds(
    peer: FederationPeer,
    train: TrainFn | LegacyTrainFn,
    settings: TrainerSettings | None = None,
    *,
    on_event: EventSink = noop_sink,
) -> TrainerResult:
    """Take part in rounds until the aggregator announces DONE; see the module docstring.

    ``train(arrays, round, config) -> (arrays, num_samples, metrics)`` runs
    in a worker thread; ``config`` is the strategy's config for the round (an
    empty mapping unless the strategy sends one). Returns when DONE arrives
    (after making sure the final checkpoint is held locally), or with status
    ``failed`` after ``idle_timeout`` seconds without any message from the
    aggregator.
    """
    train_fn = as_train_fn(train)
    settings = settings or TrainerSettings()
    if settings.federation is not None:
        from fedstore.federation.member import follow_federation

        return await follow_federation(peer, train_fn, settings, on_event=on_event)
    from fedstore.federation.aggregator import warn_open_mode

    warn_open_mode(log)
    me = peer.peer_id
    aggregator = settings.aggregator
    trained: list[int] = []
    current: tuple[int, str] | None = None
    arrays: Arrays | None = None
    last: tuple[int, bytes, float, int] | None = None  # round, message, sent at, attempt
    failures = DropCounters()
    encoder: UpdateEncoder | None = None  # the lossy encoding in use and its residuals
    async with peer.messages() as inbox:
        # a trainer pinned to its aggregator takes no head from other peers: it
        # learns the base of each round from its aggregator's ROUND
        head = await (peer.local_head() if aggregator is not None else peer.head())
        if head is not None:
            try:
                arrays = (await peer.load_global(*head)).arrays
                current = head
                on_event(TrainerSynced(*head))
            except FedstoreError as exc:
                log.warning("cannot load the head (round %d, %s): %s", head[0], head[1], exc)
        while True:
            with trio.move_on_after(settings.idle_timeout) as idle:
                sender, data = await inbox.receive()
            if idle.cancelled_caught:
                reason = f"no message from an aggregator for {settings.idle_timeout:g}s"
                return TrainerResult(
                    "failed",
                    current[0] if current else -1,
                    current[1] if current else "",
                    tuple(trained),
                    reason,
                )
            if sender == me:
                continue
            try:
                msg = decode_message(data)
            except MessageError as exc:
                log.warning("dropping malformed message from %s: %s", sender, exc)
                continue
            if isinstance(msg, UpdateMessage | RoundResult) or msg.federation is not None:
                continue  # updates, and another protocol's round control
            if msg.aggregator != sender:
                log.warning(
                    "dropping %s signed by %s on behalf of %s",
                    type(msg).__name__,
                    sender,
                    msg.aggregator,
                )
                continue
            if aggregator is None:
                aggregator = sender
            elif sender != aggregator:
                continue
            if isinstance(msg, Done):
                if msg.status == "complete" and (current is None or current[1] != msg.cid):
                    try:
                        arrays = (await peer.load_global(msg.round, msg.cid)).arrays
                    except FedstoreError as exc:
                        failures.drop("fed-learn", "final_unavailable", sender, str(exc))
                        continue
                    current = (msg.round, msg.cid)
                    on_event(TrainerSynced(msg.round, msg.cid))
                return TrainerResult(msg.status, msg.round, msg.cid, tuple(trained), msg.reason)
            # RoundOpen
            if last is not None and msg.round == last[0]:
                if me not in msg.received and (
                    msg.attempt != last[3] or trio.current_time() - last[2] > settings.resend_after
                ):
                    log.info("round %d: update not acknowledged, re-sending", msg.round)
                    await peer.publish(last[1])
                    last = (last[0], last[1], trio.current_time(), msg.attempt)
                continue
            if last is not None and msg.round < last[0]:
                continue
            if current is None or current[1] != msg.base_cid or arrays is None:
                arrays = None  # free the old model before the new one arrives
                try:
                    arrays = (await peer.load_global(msg.base_round, msg.base_cid)).arrays
                except FedstoreError as exc:  # skip the round; its next announcement retries
                    failures.drop("fed-learn", "base_unavailable", sender, f"{msg.base_cid}: {exc}")
                    continue
                current = (msg.base_round, msg.base_cid)
                on_event(TrainerSynced(msg.base_round, msg.base_cid))
            base = arrays
            encoding, config = split_round_config(msg.config)
            if not encoding.lossy:
                encoder = None
            elif encoder is None or encoder.encoding != encoding:
                encoder = UpdateEncoder(encoding, error_feedback=settings.error_feedback)
            new, num_samples, metrics = await trio.to_thread.run_sync(
                train_fn, base, msg.round, config
            )
            out = await _make_update(
                peer, msg, new, int(num_samples), metrics, settings, base, encoder
            )
            del new, base  # the trained arrays are sent; the base stays in ``arrays``
            wire = out.encode()
            await peer.publish(wire)
            last = (msg.round, wire, trio.current_time(), msg.attempt)
            trained.append(msg.round)
            on_event(
                TrainerUpdated(
                    msg.round,
                    int(num_samples),
                    {k: float(v) for k, v in metrics.items()},
                    out.cid is not None,
                    len(out.payload) or out.size,
                    out.encoding or "float32",
                )
            )


def clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics that can be sent: valid names, finite values, at most 32 (others logged)."""
    clean: dict[str, float] = {}
    for k, v in metrics.items():
        if len(clean) < MAX_METRICS and METRIC_NAME_RE.fullmatch(k) and math.isfinite(float(v)):
            clean[k] = float(v)
        else:
            log.debug("metric %r not sent (bad name, not finite, or too many)", k)
    return clean


async def _make_update(
    peer: FederationPeer,
    rnd: RoundOpen,
    arrays: Mapping[str, NDArray],
    num_samples: int,
    metrics: Mapping[str, float],
    settings: TrainerSettings,
    base: Mapping[str, NDArray],
    encoder: UpdateEncoder | None,
) -> UpdateMessage:
    clean = clean_metrics(metrics)
    payload, encoding = await trio.to_thread.run_sync(_encode, dict(arrays), base, encoder)
    if len(payload) + MAX_HEADER_BYTES <= settings.inline_limit:
        return UpdateMessage(
            rnd.round,
            peer.peer_id,
            num_samples,
            payload,
            base_cid=rnd.base_cid,
            metrics=clean,
            encoding=encoding,
        )
    cid = await peer.put_blob(payload)
    return UpdateMessage(
        rnd.round,
        peer.peer_id,
        num_samples,
        b"",
        cid,
        len(payload),
        base_cid=rnd.base_cid,
        metrics=clean,
        encoding=encoding,
    )


def _encode(
    arrays: Mapping[str, NDArray], base: Mapping[str, NDArray], encoder: UpdateEncoder | None
) -> tuple[bytes, str | None]:
    """The update's payload and its encoding's name (None: a float32 checkpoint)."""
    if encoder is not None:
        try:
            return encoder.encode(base, arrays), encoder.encoding.text
        except ValueError as exc:  # not the base model's layout: let the aggregator say why
            log.warning("update not encoded as %s (%s); sending float32", encoder.encoding, exc)
    return encode_tensors(arrays, None), None
