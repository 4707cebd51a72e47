"""Federated learning with your own model: two functions over dicts of numpy arrays.

You write::

    def train(arrays: dict[str, np.ndarray], round: int) -> tuple[dict[str, np.ndarray], int, dict]:
        ...  # load arrays into your model, train on local data
        return new_arrays, num_examples, {"loss": loss}

    def evaluate(arrays: dict[str, np.ndarray]) -> dict[str, float]:
        ...
        return {"accuracy": acc}

and fedstore does the rest: the aggregator node saves every global model as
a content-addressed checkpoint (local store, catalog, storage backends,
announcement by CID), trainers fetch it by CID, train, and send updates back
over libp2p gossipsub. Run one aggregator::

    from fedstore.federation import api

    result = api.run_aggregator(
        initial_arrays, evaluate=evaluate, rounds=10, strategy="fedavg",
        quorum=3, data_dir="agg", on_ready=lambda addr: print("bootstrap:", addr),
    )

and any number of trainers, each on its own data::

    api.run_trainer(train, bootstrap=[addr], data_dir="trainer-1")

``run_*`` start their own trio loop; inside trio, await ``aggregate``/``train``
instead. Both accept a ready :class:`~fedstore.config.NodeConfig` (``node=``)
or the few fields the examples need. With PyTorch installed,
:func:`arrays_from_state_dict` and :func:`state_dict_from_arrays` convert
between a ``state_dict`` and the arrays these functions exchange.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import ConfigError
from fedstore.federation.aggregator import EvaluateFn
from fedstore.federation.aggregator import run_aggregator as _run_aggregator_loop
from fedstore.federation.events import EventSink, FederationResult, TrainerResult, noop_sink
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
from fedstore.federation.trainer import TrainFn
from fedstore.federation.trainer import run_trainer as _run_trainer_loop

__all__ = [
    "EvaluateFn",
    "TrainFn",
    "aggregate",
    "arrays_from_state_dict",
    "make_node_config",
    "run_aggregator",
    "run_trainer",
    "state_dict_from_arrays",
    "train",
]

NDArray = npt.NDArray[np.generic]


def make_node_config(
    *,
    role: str,
    data_dir: str | Path,
    bootstrap: Sequence[str] = (),
    listen: str | None = None,
    backends: Sequence[str] | None = None,
    settings: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """A :class:`~fedstore.config.NodeConfig` from explicit values over the environment.

    Precedence as everywhere in fedstore: these arguments, then the
    environment (``environ``, default ``os.environ``), ``.env`` and
    ``fedstore.toml``. ``settings`` adds variables (e.g. ``FEDSTORE_FS_ROOT``).
    """
    from fedstore.config import load_node_config

    flags: dict[str, str | None] = dict(settings or {})
    flags.update(
        {
            "FEDSTORE_ROLE": role,
            "CHECKPOINT_DIR": str(data_dir),
            "BOOTSTRAP_ADDR": ",".join(bootstrap) if bootstrap else None,
            "FEDSTORE_LISTEN": listen,
            "FEDSTORE_BACKENDS": ",".join(backends) if backends else None,
        }
    )
    return load_node_config(flags, environ=environ)


def _quorum(q: int | str | QuorumSchedule) -> QuorumSchedule:
    if isinstance(q, QuorumSchedule):
        return q
    if isinstance(q, int):
        return QuorumSchedule(q)
    return QuorumSchedule.parse(q)


async def aggregate(
    initial: Mapping[str, NDArray],
    *,
    evaluate: EvaluateFn | None = None,
    rounds: int = 10,
    strategy: str = "fedavg",
    quorum: int | str | QuorumSchedule = 1,
    min_updates: int = 1,
    round_timeout: float = 30.0,
    node: Any = None,
    data_dir: str | Path = "checkpoints_bootstrap",
    backends: Sequence[str] | None = None,
    on_event: EventSink = noop_sink,
    on_ready: Callable[[str], None] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> FederationResult:
    """Run a node as the federation's aggregator (bootstrap role) for ``rounds`` rounds.

    ``on_ready(multiaddr)`` is called once the node listens, with the
    address trainers should bootstrap from. ``quorum`` is a count, a
    :class:`QuorumSchedule`, or its text form (``"2,5:3"``).
    """
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import open_node

    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    cfg = node or make_node_config(role="bootstrap", data_dir=data_dir, backends=backends)
    settings = AggregatorSettings(
        rounds=rounds,
        strategy=strategy,
        quorum=_quorum(quorum),
        min_updates=min_updates,
        round_timeout=round_timeout,
        metadata=dict(metadata or {}),
    )
    async with open_node(cfg) as n:
        if on_ready is not None:
            on_ready(n.addrs()[0])
        return await _run_aggregator_loop(
            NodePeer(n), initial, settings, evaluate=evaluate, on_event=on_event
        )


async def train(
    train_fn: TrainFn,
    *,
    node: Any = None,
    data_dir: str | Path = "checkpoints_trainer",
    bootstrap: Sequence[str] = (),
    backends: Sequence[str] | None = None,
    idle_timeout: float = 60.0,
    connect_timeout: float = 30.0,
    on_event: EventSink = noop_sink,
) -> TrainerResult:
    """Run a node as a trainer until the aggregator announces the end.

    Waits up to ``connect_timeout`` seconds for a first peer, syncs the
    network's head by CID, then trains each round the aggregator opens.
    """
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import open_node

    cfg = node or make_node_config(
        role="trainer", data_dir=data_dir, bootstrap=bootstrap, backends=backends
    )
    if not cfg.bootstrap:
        raise ConfigError("a trainer needs at least one bootstrap address (the aggregator's)")
    async with open_node(cfg) as n:
        await n.wait_for_peers(1, timeout=connect_timeout)
        peer = NodePeer(n)
        settings = TrainerSettings(
            idle_timeout=idle_timeout, inline_limit=min(peer.inline_limit, 1 << 20)
        )
        return await _run_trainer_loop(peer, train_fn, settings, on_event=on_event)


def run_aggregator(initial: Mapping[str, NDArray], **kwargs: Any) -> FederationResult:
    """Blocking :func:`aggregate` (starts a trio loop)."""

    async def main() -> FederationResult:
        return await aggregate(initial, **kwargs)

    return trio.run(main)


def run_trainer(train_fn: TrainFn, **kwargs: Any) -> TrainerResult:
    """Blocking :func:`train` (starts a trio loop)."""

    async def main() -> TrainerResult:
        return await train(train_fn, **kwargs)

    return trio.run(main)


# -- PyTorch (optional) -----------------------------------------------------------


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ConfigError("PyTorch is not installed: pip install torch") from exc
    return torch


def arrays_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, NDArray]:
    """A PyTorch ``state_dict`` as numpy arrays (copied to CPU, detached)."""
    _torch()
    return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in state_dict.items()}


def state_dict_from_arrays(
    arrays: Mapping[str, NDArray], like: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Numpy arrays as a ``state_dict`` of tensors (on ``like``'s devices and dtypes if given).

    Load it with ``model.load_state_dict(state_dict_from_arrays(arrays, model.state_dict()))``.
    """
    torch = _torch()
    out: dict[str, Any] = {}
    for k, a in arrays.items():
        t = torch.from_numpy(np.array(a, copy=True))
        if like is not None and k in like:
            t = t.to(device=like[k].device, dtype=like[k].dtype)
        out[k] = t
    return out
