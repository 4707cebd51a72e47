"""The trainer's side of the round protocol (see :mod:`fedstore.federation.roles`).

:func:`run_trainer` follows one aggregator: it syncs the base model of each
announced round by CID, trains in a worker thread, publishes its update
(inline or by CID) and re-sends it while the aggregator has not acknowledged
it, until ``DONE``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import trio

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
    UpdateMessage,
    decode_message,
    encode_tensors,
)
from fedstore.federation.settings import TrainerSettings
from fedstore.federation.transport import Arrays, FederationPeer

__all__ = ["TrainFn", "run_trainer"]

log = logging.getLogger(__name__)

NDArray = npt.NDArray[np.generic]
TrainFn = Callable[[Arrays, int], tuple[Mapping[str, NDArray], int, Mapping[str, float]]]


async def run_trainer(
    peer: FederationPeer,
    train: TrainFn,
    settings: TrainerSettings | None = None,
    *,
    on_event: EventSink = noop_sink,
) -> TrainerResult:
    """Take part in rounds until the aggregator announces DONE; see the module docstring.

    ``train(arrays, round) -> (arrays, num_samples, metrics)`` runs in a
    worker thread. Returns when DONE arrives (after making sure the final
    checkpoint is held locally), or with status ``failed`` after
    ``idle_timeout`` seconds without any message from the aggregator.
    """
    settings = settings or TrainerSettings()
    me = peer.peer_id
    aggregator = settings.aggregator
    trained: list[int] = []
    current: tuple[int, str] | None = None
    arrays: Arrays | None = None
    last: tuple[int, bytes, float, int] | None = None  # round, message, sent at, attempt
    async with peer.messages() as inbox:
        head = await peer.head()
        if head is not None:
            arrays = await peer.load_global(*head)
            current = head
            on_event(TrainerSynced(*head))
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
            if isinstance(msg, UpdateMessage):
                continue
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
                    arrays = await peer.load_global(msg.round, msg.cid)
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
                arrays = await peer.load_global(msg.base_round, msg.base_cid)
                current = (msg.base_round, msg.base_cid)
                on_event(TrainerSynced(msg.base_round, msg.base_cid))
            base = arrays
            new, num_samples, metrics = await trio.to_thread.run_sync(train, base, msg.round)
            out = await _make_update(peer, msg, new, int(num_samples), metrics, settings)
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
                )
            )


async def _make_update(
    peer: FederationPeer,
    rnd: RoundOpen,
    arrays: Mapping[str, NDArray],
    num_samples: int,
    metrics: Mapping[str, float],
    settings: TrainerSettings,
) -> UpdateMessage:
    clean: dict[str, float] = {}
    for k, v in metrics.items():
        if len(clean) < MAX_METRICS and METRIC_NAME_RE.fullmatch(k) and math.isfinite(float(v)):
            clean[k] = float(v)
        else:
            log.debug("metric %r not sent (bad name, not finite, or too many)", k)
    payload = await trio.to_thread.run_sync(encode_tensors, dict(arrays), None)
    if len(payload) + MAX_HEADER_BYTES <= settings.inline_limit:
        return UpdateMessage(
            rnd.round, peer.peer_id, num_samples, payload, base_cid=rnd.base_cid, metrics=clean
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
    )
