"""Federated learning with your own model: two functions over dicts of numpy arrays.

You write::

    def train(arrays: dict[str, np.ndarray], round: int, config: Mapping[str, str | int | float]
              ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        ...  # load arrays into your model, train on local data (config: from the strategy)
        return new_arrays, num_examples, {"loss": loss}

    def evaluate(arrays: dict[str, np.ndarray]) -> dict[str, float]:
        ...
        return {"accuracy": acc}

and fedstore does the rest: the aggregator node saves every global model as
a content-addressed checkpoint (local store, catalog, storage backends,
announcement by CID), trainers fetch it by CID, train, and send updates back
over libp2p gossipsub; the trainers' metrics are combined (a mean weighted by
``num_examples``) and recorded per round in the aggregator's catalog with the
evaluation's. Run one aggregator::

    from fedstore.federation import api

    result = api.run_aggregator(
        initial_arrays, evaluate=evaluate, rounds=10, strategy="fedavg",
        quorum=3, data_dir="agg", on_ready=lambda addr: print("bootstrap:", addr),
    )

and any number of trainers, each on its own data::

    api.run_trainer(train, bootstrap=[addr], data_dir="trainer-1")

``strategy`` is a registered name (``fedavg``, ``median``, ``trimmed-mean``,
``fedadam``, or any installed plugin's; ``strategy_settings`` are its
settings, e.g. ``{"trim": 0.1}``) or a
:class:`~fedstore.federation.strategies.Strategy` instance. A ``train``
function of the older form ``train(arrays, round)`` still works, with a
:class:`FutureWarning` (see :func:`fedstore.federation.trainer.as_train_fn`).

Layers, one name each: :func:`aggregate` / :func:`train` run a node in an
existing trio loop; :func:`run_aggregator` / :func:`run_trainer` are the same
calls, blocking (they start their own trio loop); underneath,
:func:`fedstore.federation.aggregator.lead_rounds` and
:func:`fedstore.federation.trainer.follow_rounds` run the round protocol over
any :class:`~fedstore.federation.transport.FederationPeer`. Both entry points
accept a ready :class:`~fedstore.config.NodeConfig` (``node=``) or the few
fields the examples need.

An :class:`~fedstore.app.App` bundles all of the above (initial weights,
``train``, ``evaluate``, strategy and round defaults): :func:`aggregate_app`
and :func:`train_app` (blocking: :func:`run_app_aggregator`,
:func:`run_app_trainer`) run one, as ``fedstore aggregate|train|simulate
--app MODULE:OBJ`` do.

With PyTorch installed, :func:`arrays_from_state_dict` and
:func:`state_dict_from_arrays` (from :mod:`fedstore.torch_state`) convert
between a ``state_dict`` and the arrays these functions exchange.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import ConfigError
from fedstore.federation.aggregator import EvaluateFn, lead_rounds
from fedstore.federation.events import EventSink, FederationResult, TrainerResult, noop_sink
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
from fedstore.federation.strategies.base import Strategy
from fedstore.federation.strategies.registry import SettingValue, load_strategy
from fedstore.federation.trainer import LegacyTrainFn, TrainFn, follow_rounds
from fedstore.federation.update_encoding import UpdateEncoding
from fedstore.torch_state import TorchTensor, arrays_from_state_dict, state_dict_from_arrays

if TYPE_CHECKING:
    from fedstore.app import App, TrainerContext
    from fedstore.config import NodeConfig

__all__ = [
    "EvaluateFn",
    "LegacyTrainFn",
    "TorchTensor",
    "TrainFn",
    "aggregate",
    "aggregate_app",
    "arrays_from_state_dict",
    "make_node_config",
    "run_aggregator",
    "run_app_aggregator",
    "run_app_trainer",
    "run_trainer",
    "state_dict_from_arrays",
    "train",
    "train_app",
]

NDArray = npt.NDArray[np.generic]
P = ParamSpec("P")
T = TypeVar("T")


def make_node_config(
    *,
    role: str,
    data_dir: str | Path,
    bootstrap: Sequence[str] = (),
    listen: str | None = None,
    backends: Sequence[str] | None = None,
    settings: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
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
    try:
        return QuorumSchedule.parse(q)
    except ValueError as exc:
        raise ConfigError(f"quorum: {exc}") from None


def _strategy(strategy: Strategy | str, settings: Mapping[str, SettingValue] | None) -> Strategy:
    if isinstance(strategy, str):
        return load_strategy(strategy, settings)
    if settings:
        raise ConfigError("strategy_settings go with a strategy name, not a Strategy instance")
    return strategy


async def aggregate(
    initial: Mapping[str, NDArray],
    *,
    evaluate: EvaluateFn | None = None,
    rounds: int = 10,
    strategy: Strategy | str = "fedavg",
    strategy_settings: Mapping[str, SettingValue] | None = None,
    quorum: int | str | QuorumSchedule = 1,
    min_updates: int = 1,
    round_timeout: float = 30.0,
    node: NodeConfig | None = None,
    data_dir: str | Path = "checkpoints_bootstrap",
    backends: Sequence[str] | None = None,
    on_event: EventSink = noop_sink,
    on_ready: Callable[[str], None] | None = None,
    metadata: Mapping[str, str] | None = None,
    update_encoding: UpdateEncoding | str = "float32",
) -> FederationResult:
    """Run a node as the federation's aggregator (bootstrap role) for ``rounds`` rounds.

    ``on_ready(multiaddr)`` is called once the node listens, with the
    address trainers should bootstrap from. ``quorum`` is a count, a
    :class:`QuorumSchedule`, or its text form (``"2,5:3"``). ``strategy``
    is a registered name (with ``strategy_settings``) or a Strategy;
    an unknown name or bad setting raises
    :class:`~fedstore.errors.StrategyError` before the node starts.
    ``update_encoding`` (``float32``, ``float16``, ``int8``, ``int8:BLOCK``,
    ``topk:FRACTION``; see :mod:`fedstore.federation.update_codec`) is how
    trainers are asked to encode their updates; a bad one is a ConfigError.
    """
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import open_node

    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    settings = AggregatorSettings(
        rounds=rounds,
        strategy=_strategy(strategy, strategy_settings),
        quorum=_quorum(quorum),
        min_updates=min_updates,
        round_timeout=round_timeout,
        metadata=dict(metadata or {}),
        update_encoding=(
            update_encoding
            if isinstance(update_encoding, UpdateEncoding)
            else UpdateEncoding.parse(update_encoding)
        ),
    )
    cfg = node or make_node_config(role="bootstrap", data_dir=data_dir, backends=backends)
    async with open_node(cfg) as n:
        if on_ready is not None:
            on_ready(n.addrs()[0])
        return await lead_rounds(
            NodePeer(n), initial, settings, evaluate=evaluate, on_event=on_event
        )


async def train(
    train_fn: TrainFn | LegacyTrainFn,
    *,
    node: NodeConfig | None = None,
    data_dir: str | Path = "checkpoints_trainer",
    bootstrap: Sequence[str] = (),
    backends: Sequence[str] | None = None,
    idle_timeout: float = 60.0,
    connect_timeout: float = 30.0,
    on_event: EventSink = noop_sink,
    on_ready: Callable[[str], None] | None = None,
) -> TrainerResult:
    """Run a node as a trainer until the aggregator announces the end.

    Waits up to ``connect_timeout`` seconds for a first peer, syncs the
    network's head by CID, then runs ``train_fn(arrays, round, config)`` for
    each round the aggregator opens. ``on_ready(multiaddr)`` is called once
    the node listens, before it waits for peers.
    """
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import open_node

    cfg = node or make_node_config(
        role="trainer", data_dir=data_dir, bootstrap=bootstrap, backends=backends
    )
    if not cfg.bootstrap:
        raise ConfigError("a trainer needs at least one bootstrap address (the aggregator's)")
    async with open_node(cfg) as n:
        if on_ready is not None:
            on_ready(n.addrs()[0])
        await n.wait_for_peers(1, timeout=connect_timeout)
        peer = NodePeer(n)
        settings = TrainerSettings(
            idle_timeout=idle_timeout, inline_limit=min(peer.inline_limit, 1 << 20)
        )
        return await follow_rounds(peer, train_fn, settings, on_event=on_event)


# -- apps (fedstore.app.App) -------------------------------------------------------------


async def aggregate_app(
    app: App,
    *,
    rounds: int | None = None,
    quorum: int | str | QuorumSchedule | None = None,
    min_updates: int | None = None,
    round_timeout: float | None = None,
    strategy: str | Strategy | None = None,
    strategy_settings: Mapping[str, SettingValue] | None = None,
    update_encoding: str | None = None,
    metadata: Mapping[str, str] | None = None,
    node: NodeConfig | None = None,
    data_dir: str | Path = "checkpoints_bootstrap",
    backends: Sequence[str] | None = None,
    on_event: EventSink = noop_sink,
    on_ready: Callable[[str], None] | None = None,
) -> FederationResult:
    """:func:`aggregate` with an :class:`~fedstore.app.App`'s weights, evaluation and defaults.

    Each argument given overrides the app's value: ``strategy`` by name or
    instance (``strategy_settings`` without a name are added to the app's
    strategy's own); ``metadata`` is added to the app's. The strategy is loaded and
    the initial weights computed (in a worker thread) before the node starts,
    so a bad app fails without touching the network.
    """
    chosen = (
        _strategy(strategy, strategy_settings)
        if isinstance(strategy, Strategy)
        else app.load_strategy(strategy, strategy_settings)
    )
    initial = await trio.to_thread.run_sync(app.initial_arrays)
    return await aggregate(
        initial,
        evaluate=app.evaluate_fn(),
        rounds=app.rounds if rounds is None else rounds,
        strategy=chosen,
        quorum=app.quorum if quorum is None else quorum,
        min_updates=app.min_updates if min_updates is None else min_updates,
        round_timeout=app.round_timeout if round_timeout is None else round_timeout,
        node=node,
        data_dir=data_dir,
        backends=backends,
        on_event=on_event,
        on_ready=on_ready,
        metadata={**app.metadata, **(metadata or {})},
        update_encoding=update_encoding or app.update_encoding,
    )


async def train_app(
    app: App,
    *,
    context: TrainerContext | None = None,
    node: NodeConfig | None = None,
    data_dir: str | Path = "checkpoints_trainer",
    bootstrap: Sequence[str] = (),
    backends: Sequence[str] | None = None,
    idle_timeout: float = 60.0,
    connect_timeout: float = 30.0,
    on_event: EventSink = noop_sink,
    on_ready: Callable[[str], None] | None = None,
) -> TrainerResult:
    """:func:`train` with an :class:`~fedstore.app.App`'s training function.

    ``context`` says which trainer this is (for an app with a ``trainer``
    factory; default: 1 of 1). The training function is made (its data
    loaded) in a worker thread before the node starts; its inputs and
    outputs are checked every round (:meth:`fedstore.app.App.train_fn`).
    """
    fn = await trio.to_thread.run_sync(app.train_fn, context)
    return await train(
        fn,
        node=node,
        data_dir=data_dir,
        bootstrap=bootstrap,
        backends=backends,
        idle_timeout=idle_timeout,
        connect_timeout=connect_timeout,
        on_event=on_event,
        on_ready=on_ready,
    )


def _blocking(fn: Callable[P, Awaitable[T]], name: str, doc: str) -> Callable[P, T]:
    """``fn`` run to completion in a new trio loop, with ``fn``'s parameters."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return trio.run(functools.partial(fn, *args, **kwargs))

    run.__name__ = run.__qualname__ = name
    run.__doc__ = doc
    return run


run_aggregator = _blocking(
    aggregate,
    "run_aggregator",
    """Blocking :func:`aggregate`: same parameters, runs its own trio loop until the end.

    Returns the :class:`~fedstore.federation.events.FederationResult`. Not to
    be confused with :func:`fedstore.federation.aggregator.lead_rounds`, the
    round loop over a peer that this ends up running.
    """,
)

run_trainer = _blocking(
    train,
    "run_trainer",
    """Blocking :func:`train`: same parameters, runs its own trio loop until the end.

    Returns the :class:`~fedstore.federation.events.TrainerResult`.
    """,
)

run_app_aggregator = _blocking(
    aggregate_app,
    "run_app_aggregator",
    """Blocking :func:`aggregate_app`: same parameters, runs its own trio loop until the end.""",
)

run_app_trainer = _blocking(
    train_app,
    "run_app_trainer",
    """Blocking :func:`train_app`: same parameters, runs its own trio loop until the end.""",
)
