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

**Members only.** Without a manifest a federation is *open*: any peer that
connects may send updates (a warning says so). Give every node the
federation's signed manifest (``federation="fed.json"`` or its CID, or the
``FEDSTORE_FEDERATION`` setting; ``fedstore federation init`` makes one) and
only its members take part: the manifest's strategy, rounds, quorum and
round timeout apply (the corresponding arguments here are then ignored),
aggregation duty rotates among its aggregator-capable members, and every
member verifies every global model before adopting it (``verify=False`` /
``FEDSTORE_VERIFY=off`` checks only what it is bound to). A member with both
roles runs :func:`take_part` with both ``initial`` and ``train``.

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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import trio

from fedstore.errors import ConfigError
from fedstore.federation.aggregator import EvaluateFn, lead_rounds
from fedstore.federation.events import (
    EventSink,
    FederationResult,
    MemberResult,
    TrainerResult,
    noop_sink,
)
from fedstore.federation.rounds import MemberOptions
from fedstore.federation.settings import AggregatorSettings, QuorumSchedule, TrainerSettings
from fedstore.federation.strategies.base import Strategy
from fedstore.federation.strategies.registry import SettingValue, load_strategy
from fedstore.federation.trainer import LegacyTrainFn, TrainFn, as_train_fn, follow_rounds
from fedstore.federation.update_encoding import UpdateEncoding
from fedstore.torch_state import TorchTensor, arrays_from_state_dict, state_dict_from_arrays

if TYPE_CHECKING:
    from fedstore.app import App, TrainerContext
    from fedstore.config import NodeConfig
    from fedstore.federation.membership import Membership
    from fedstore.node import Node

__all__ = [
    "EvaluateFn",
    "LegacyTrainFn",
    "MemberOptions",
    "TorchTensor",
    "TrainFn",
    "aggregate",
    "aggregate_app",
    "arrays_from_state_dict",
    "make_node_config",
    "run_aggregator",
    "run_app_aggregator",
    "run_app_trainer",
    "run_member",
    "run_trainer",
    "state_dict_from_arrays",
    "take_part",
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
    listen: str | Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    settings: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    announce: str | Sequence[str] | None = None,
    federation: str | Path | None = None,
) -> NodeConfig:
    """A :class:`~fedstore.config.NodeConfig` from explicit values over the environment.

    Precedence as everywhere in fedstore: these arguments, then the
    environment (``environ``, default ``os.environ``), ``.env`` and
    ``fedstore.toml``. ``listen`` is what the node binds (``/ip4/0.0.0.0/tcp/4001`` to be
    reachable from other hosts; default ``FEDSTORE_LISTEN``, else a free
    loopback port); ``announce`` what it tells peers to dial (default:
    the bound addresses, ``0.0.0.0`` replaced by this host's interface
    addresses; see :mod:`fedstore.p2p.addresses`). ``settings`` adds
    variables at the arguments' rank
    (e.g. ``FEDSTORE_FS_ROOT``, ``FEDSTORE_BACKENDS``, ``FEDSTORE_LISTEN``,
    under their ``FEDSTORE_`` names or their aliases). A setting given both
    as an argument (or twice in ``settings``, under a name and an alias)
    with different values is a :class:`~fedstore.errors.ConfigError`, never
    a silent choice.
    """
    from fedstore.config import load_node_config

    explicit: dict[str, str | None] = {
        "FEDSTORE_ROLE": role,
        "FEDSTORE_DIR": str(data_dir),
        "FEDSTORE_BOOTSTRAP": ",".join(bootstrap) if bootstrap else None,
        "FEDSTORE_LISTEN": _joined(listen),
        "FEDSTORE_ANNOUNCE": _joined(announce),
        "FEDSTORE_BACKENDS": ",".join(backends) if backends else None,
        "FEDSTORE_FEDERATION": str(federation) if federation is not None else None,
    }
    flags = _canonical_settings(settings or {})
    for name, value in explicit.items():
        if value is None:
            continue
        given = flags.get(name)
        if given is not None and not _same_setting(name, given, value):
            raise ConfigError(
                f"{name} is given twice to make_node_config: {value!r} as an argument and "
                f"{given!r} in settings; give it once"
            )
        flags[name] = value
    return load_node_config(flags, environ=environ)


#: Settings whose value is a comma-separated list (compared item by item).
_LIST_SETTINGS = frozenset(
    {"FEDSTORE_BOOTSTRAP", "FEDSTORE_LISTEN", "FEDSTORE_ANNOUNCE", "FEDSTORE_BACKENDS"}
)


def _canonical_settings(settings: Mapping[str, str]) -> dict[str, str | None]:
    """*settings* with the core's aliases (``CHECKPOINT_DIR``...) under their canonical names."""
    from fedstore.config import core_setting

    out: dict[str, str | None] = {}
    for key, value in settings.items():
        try:
            name = core_setting(key).name
        except KeyError:
            name = key
        given = out.get(name)
        if given is not None and not _same_setting(name, given, value):
            raise ConfigError(
                f"{name} is given twice in make_node_config's settings (once as {key}) with "
                "different values; give it once"
            )
        out[name] = value
    return out


def _same_setting(name: str, a: str, b: str) -> bool:
    if name in _LIST_SETTINGS:
        return [p.strip() for p in a.split(",") if p.strip()] == [
            p.strip() for p in b.split(",") if p.strip()
        ]
    if name == "FEDSTORE_ROLE":
        return a.strip().lower() == b.strip().lower()
    if name == "FEDSTORE_DIR":
        return Path(a).expanduser() == Path(b).expanduser()
    return a == b


def _joined(value: str | Sequence[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(value) or None


async def _membership(node: Node, federation: str | Path | Membership | None) -> Membership | None:
    """The federation ``node`` takes part in: the argument, else its config; None: open."""
    from fedstore.federation.membership import Membership
    from fedstore.federation.nodepeer import join_federation

    if isinstance(federation, Membership):
        return await join_federation(node, federation)
    source = str(federation) if federation is not None else node.config.federation
    if not source:
        return None
    return await join_federation(node, source)


def _options(options: MemberOptions | None, verify: bool | None, cfg: NodeConfig) -> MemberOptions:
    from dataclasses import replace

    opts = options or MemberOptions()
    return replace(opts, verify=cfg.verify if verify is None else verify)


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
    federation: str | Path | Membership | None = None,
    verify: bool | None = None,
    resume: bool = False,
    options: MemberOptions | None = None,
    update_encoding: UpdateEncoding | str = "float32",
    listen: str | Sequence[str] | None = None,
    announce: str | Sequence[str] | None = None,
) -> FederationResult:
    """Run a node as the federation's aggregator (bootstrap role) for ``rounds`` rounds.

    With a manifest (``federation``, or the node's ``FEDSTORE_FEDERATION``)
    this member takes its share of aggregation duty under the manifest's
    rules; ``verify`` (default: the node's ``FEDSTORE_VERIFY``) and
    ``options`` tune it (:class:`MemberOptions`). ``resume`` lets it take the
    federation's head from the network when it holds none itself.

    ``on_ready(multiaddr)`` is called once the node listens, with the
    address trainers should bootstrap from. ``quorum`` is a count, a
    :class:`QuorumSchedule`, or its text form (``"2,5:3"``). ``strategy``
    is a registered name (with ``strategy_settings``) or a Strategy;
    an unknown name or bad setting raises
    :class:`~fedstore.errors.StrategyError` before the node starts.
    ``update_encoding`` (``float32``, ``float16``, ``int8``, ``int8:BLOCK``,
    ``topk:FRACTION``; see :mod:`fedstore.federation.update_codec`) is how
    trainers are asked to encode their updates; a bad one is a ConfigError.
    ``listen``/``announce`` as in :func:`make_node_config` (ignored with
    ``node=``): trainers on other hosts need ``listen="/ip4/0.0.0.0/tcp/4001"``
    (or another address they can reach).
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
    cfg = node or make_node_config(
        role="bootstrap", data_dir=data_dir, backends=backends, listen=listen, announce=announce
    )
    async with open_node(cfg) as n:
        membership = await _membership(n, federation)
        if membership is not None:
            settings = replace(
                settings,
                resume=resume,
                federation=membership,
                member=replace(_options(options, verify, cfg), resume=resume),
            )
        else:
            settings = replace(settings, resume=resume)
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
    listen: str | Sequence[str] | None = None,
    announce: str | Sequence[str] | None = None,
    on_ready: Callable[[str], None] | None = None,
    aggregator: str | None = None,
    federation: str | Path | Membership | None = None,
    verify: bool | None = None,
    options: MemberOptions | None = None,
) -> TrainerResult:
    """Run a node as a trainer until the aggregator announces the end.

    Waits up to ``connect_timeout`` seconds for a bootstrap peer (else a
    :class:`~fedstore.errors.NetworkError` naming the address tried and what
    to check), syncs the network's head by CID, then runs
    ``train_fn(arrays, round, config)`` for each round the aggregator opens.
    ``listen``/``announce`` as in :func:`make_node_config`. ``aggregator`` (a
    peer id) pins an open federation's aggregator: round messages from anyone
    else are ignored and no head is taken from other peers. With a manifest
    (``federation``, or the node's ``FEDSTORE_FEDERATION``) only its
    aggregator-capable members are followed and every global model is
    verified before it is trained on. ``on_ready(multiaddr)`` is called once
    the node listens, before it waits for peers.
    """
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import open_node

    cfg = node or make_node_config(
        role="trainer",
        data_dir=data_dir,
        bootstrap=bootstrap,
        backends=backends,
        listen=listen,
        announce=announce,
    )
    if not cfg.bootstrap:
        raise ConfigError("a trainer needs at least one bootstrap address (the aggregator's)")
    async with open_node(cfg) as n:
        if on_ready is not None:
            on_ready(n.addrs()[0])
        await n.wait_for_bootstrap(connect_timeout)
        membership = await _membership(n, federation)
        peer = NodePeer(n)
        settings = TrainerSettings(
            idle_timeout=idle_timeout,
            inline_limit=min(peer.inline_limit, 1 << 20),
            aggregator=aggregator,
            federation=membership,
            member=replace(_options(options, verify, cfg), idle_timeout=idle_timeout)
            if membership is not None
            else None,
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


async def take_part(
    *,
    federation: str | Path | Membership | None = None,
    initial: Mapping[str, NDArray] | None = None,
    train: TrainFn | LegacyTrainFn | None = None,
    evaluate: EvaluateFn | None = None,
    node: NodeConfig | None = None,
    data_dir: str | Path = "checkpoints_member",
    bootstrap: Sequence[str] = (),
    backends: Sequence[str] | None = None,
    verify: bool | None = None,
    options: MemberOptions | None = None,
    metadata: Mapping[str, str] | None = None,
    on_event: EventSink = noop_sink,
    on_ready: Callable[[str], None] | None = None,
) -> MemberResult:
    """Run a node as a member of a federation with a manifest, in every role it holds.

    ``initial`` (starting weights) for aggregation duty, ``train`` for
    training; a member with both roles usually gives both. Returns when the
    member adopted the last round's model or gave up.
    """
    from fedstore.errors import ManifestError
    from fedstore.federation.member import take_part as run_part
    from fedstore.federation.nodepeer import NodePeer
    from fedstore.node import open_node

    cfg = node or make_node_config(
        role="bootstrap" if not bootstrap else "trainer",
        data_dir=data_dir,
        bootstrap=bootstrap,
        backends=backends,
    )
    async with open_node(cfg) as n:
        if on_ready is not None:
            on_ready(n.addrs()[0])
        if cfg.bootstrap:
            await n.wait_for_bootstrap(30.0)
        membership = await _membership(n, federation)
        if membership is None:
            raise ManifestError("take_part needs a federation manifest (federation=FILE|CID)")
        peer = NodePeer(n)
        return await run_part(
            peer,
            membership,
            initial=initial,
            train=as_train_fn(train) if train is not None else None,
            evaluate=evaluate,
            options=_options(options, verify, cfg),
            metadata=metadata,
            inline_limit=min(peer.inline_limit, 1 << 20),
            on_event=on_event,
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

run_member = _blocking(
    take_part,
    "run_member",
    """Blocking :func:`take_part`: same parameters, runs its own trio loop until the end.

    Returns the :class:`~fedstore.federation.events.MemberResult`.
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
