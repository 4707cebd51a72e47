"""Apps: your model, data and federation defaults as one object that fedstore runs.

You write, in a module of your own::

    import numpy as np
    from fedstore.app import App

    def initial() -> dict[str, np.ndarray]:
        return {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}

    def train(arrays, round, config):       # -> (new arrays, samples used, metrics)
        ...
        return new_arrays, len(x), {"train_loss": loss}

    def evaluate(arrays):                   # -> metrics of a global model
        return {"mse": ...}

    app = App(initial=initial, train=train, evaluate=evaluate,
              strategy="fedavg", rounds=10, quorum=2)

and fedstore runs it, on one machine or across many::

    fedstore simulate --app my_module:app --trainers 3       # everything on loopback
    fedstore aggregate --app my_module:app                   # prints the address to share
    fedstore train --app my_module:app --bootstrap /ip4/.../p2p/12D3KooW...

An :class:`App` holds:

* ``initial``: the starting weights, a dict of named numpy arrays or a
  function returning one (called once, on the aggregator only);
* ``train(arrays, round, config) -> (arrays, num_samples, metrics)``: one
  trainer's local training from the round's global model (``config`` is the
  strategy's config for the round, often empty); or ``trainer(context)``, a
  function returning such a ``train`` for the trainer described by a
  :class:`TrainerContext` (which part of a data set it holds, where its data
  directory is);
* ``evaluate(arrays) -> metrics`` (optional): run by the aggregator on every
  new global model; the metrics go to the catalog and the progress view;
* ``strategy`` (a registered name such as ``fedavg``, ``median``,
  ``trimmed-mean``, ``fedadam``, with ``strategy_settings``, or a
  :class:`~fedstore.federation.strategies.Strategy` instance), and the
  defaults of ``rounds``, ``quorum``, ``min_updates``, ``round_timeout`` and
  ``update_encoding`` (command-line flags and the ``[federation]`` table of
  ``fedstore.toml`` override them);
* for ``fedstore simulate``'s report (optional): ``baseline(rounds)``, a
  non-federated reference's metrics after each round's worth of training,
  and ``targets``, minimum final values of evaluation metrics.

Every piece is checked when the App is built: a missing or mistyped one is an
:class:`~fedstore.errors.AppError` naming the field. The app's own code is
checked as it runs: what ``initial``, ``train`` and ``evaluate`` return must
have the documented types (and ``train`` must keep the model's layout), and
an exception raised inside them becomes an AppError naming the function, the
round and the line it came from (the original stays chained as
``__cause__``).

Load an app from text with :func:`load_app` (``MODULE:OBJ`` or
``path/to/file.py:OBJ``; see :mod:`fedstore.app_loader`).
"""

from __future__ import annotations

import inspect
import logging
import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

from fedstore.errors import AppError, FedstoreError

if TYPE_CHECKING:
    from fedstore.federation.strategies.base import Strategy

__all__ = [
    "App",
    "Arrays",
    "EvaluateFn",
    "RoundConfig",
    "TrainFn",
    "TrainOutput",
    "TrainerContext",
    "TrainerFactory",
    "load_app",
]

log = logging.getLogger(__name__)

NDArray: TypeAlias = npt.NDArray[np.generic]
#: A model: named numpy arrays.
Arrays: TypeAlias = Mapping[str, NDArray]
#: The strategy's config for a round, as ``train`` receives it.
RoundConfig: TypeAlias = Mapping[str, str | int | float]
#: What ``train`` returns: new arrays, the number of samples trained on, metrics.
TrainOutput: TypeAlias = tuple[Mapping[str, NDArray], int, Mapping[str, float]]
#: ``train(arrays, round, config) -> (arrays, num_samples, metrics)``
TrainFn: TypeAlias = Callable[[Arrays, int, RoundConfig], TrainOutput]
#: ``evaluate(arrays) -> metrics``
EvaluateFn: TypeAlias = Callable[[Arrays], Mapping[str, float]]
#: ``trainer(context) -> train``: a training function for one trainer.
TrainerFactory: TypeAlias = Callable[["TrainerContext"], TrainFn]
#: ``baseline(rounds) -> [metrics after round 1, ..., metrics after round N]``
BaselineFn: TypeAlias = Callable[[int], Sequence[Mapping[str, float]]]


@dataclass(frozen=True, slots=True)
class TrainerContext:
    """Who a trainer is, for an app whose trainers hold different data.

    ``index`` counts from 1 to ``count`` (``fedstore simulate`` numbers its
    trainers so; ``fedstore train`` takes ``--trainer-index`` and
    ``--trainers``, default 1 of 1). ``data_dir`` is the node's data
    directory (a place for the trainer's own files), None when unknown.
    """

    index: int = 1
    count: int = 1
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise AppError(f"TrainerContext.{name} must be a whole number, got {value!r:.40}")
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise AppError(
                f"trainer index must be between 1 and the number of trainers ({self.count}), "
                f"got {self.index}"
            )


def _positional(fn: Callable[..., object]) -> int | None:
    """How many positional arguments ``fn`` accepts (None: any number, or unknown)."""
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


def _check_callable(field_name: str, fn: object, params: int, form: str) -> None:
    if not callable(fn):
        raise AppError(f"App.{field_name} must be a function {form}, got {_kind(fn)}")
    n = _positional(fn)
    if n is not None and n < params:
        raise AppError(
            f"App.{field_name} must take {params} argument(s), {form}; {_name(fn)} takes {n}"
        )


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r:.40}" if value is not None else "None"


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _where(exc: BaseException) -> str:
    """`` (at file.py:LINE)`` of the innermost frame of ``exc``'s traceback, or ""."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {Path(last.filename).name}:{last.lineno})"


def _failed(what: str, exc: BaseException) -> AppError:
    """An AppError for an exception raised by the app's own code (logged with its traceback)."""
    if isinstance(exc, AppError):
        return exc
    log.debug("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
    detail = str(exc) if isinstance(exc, FedstoreError) else f"{type(exc).__name__}: {exc}"
    return AppError(f"{what} failed: {' '.join(detail.split())}{_where(exc)}")


def _check_arrays(what: str, value: object) -> dict[str, NDArray]:
    if not isinstance(value, Mapping):
        raise AppError(f"{what} must be a dict of named numpy arrays, got {_kind(value)}")
    if not value:
        raise AppError(f"{what} is empty: a model needs at least one array")
    out: dict[str, NDArray] = {}
    for name, arr in value.items():
        if not isinstance(name, str) or not name:
            raise AppError(f"{what}: array names must be non-empty strings, got {name!r:.40}")
        if not isinstance(arr, np.ndarray):
            hint = (
                " (convert tensors with fedstore.torch_state.arrays_from_state_dict)"
                if type(arr).__module__.startswith("torch")
                else ""
            )
            raise AppError(f"{what}: {name!r} is a {type(arr).__name__}, not a numpy array{hint}")
        out[name] = arr
    return out


def _check_metrics(what: str, value: object) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AppError(f"{what} must be a dict of metric name -> number, got {_kind(value)}")
    out: dict[str, float] = {}
    for name, v in value.items():
        if not isinstance(name, str) or isinstance(v, bool) or not isinstance(v, int | float):
            if isinstance(v, np.generic) and np.issubdtype(type(v), np.number):
                v = v.item()
            else:
                raise AppError(f"{what}: metric {name!r:.40} must be a number, got {_kind(v)}")
        out[str(name)] = float(v)
    return out


def _same_layout(what: str, base: Arrays, new: Mapping[str, NDArray]) -> None:
    if set(base) != set(new):
        missing, extra = sorted(set(base) - set(new)), sorted(set(new) - set(base))
        parts = [f"missing {missing}" if missing else "", f"extra {extra}" if extra else ""]
        raise AppError(f"{what} changed the model's arrays: {', '.join(p for p in parts if p)}")
    for name, arr in base.items():
        got = new[name]
        if got.shape != arr.shape or got.dtype != arr.dtype:
            raise AppError(
                f"{what}: array {name!r} is {got.dtype}{list(got.shape)}, "
                f"the round's model has {arr.dtype}{list(arr.shape)}"
            )


@dataclass(frozen=True, slots=True)
class _CheckedTrain:
    """``train`` with its inputs and outputs checked and its failures made AppErrors."""

    fn: TrainFn
    app: str

    def __call__(self, arrays: Arrays, round: int, config: RoundConfig) -> TrainOutput:
        what = f"app {self.app}: train in round {round}"
        try:
            out = self.fn(arrays, round, config)
        except Exception as exc:
            raise _failed(what, exc) from exc
        if not isinstance(out, tuple) or len(out) != 3:
            raise AppError(f"{what} must return (arrays, num_samples, metrics), got {_kind(out)}")
        new, num, metrics = out
        new = _check_arrays(f"{what}: the returned arrays", new)
        _same_layout(what, arrays, new)
        if isinstance(num, np.integer):
            num = int(num)
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise AppError(f"{what}: num_samples must be a whole number >= 0, got {_kind(num)}")
        return new, num, _check_metrics(f"{what}: metrics", metrics)


@dataclass(frozen=True, slots=True)
class _CheckedEvaluate:
    fn: EvaluateFn
    app: str

    def __call__(self, arrays: Arrays) -> Mapping[str, float]:
        what = f"app {self.app}: evaluate"
        try:
            out = self.fn(arrays)
        except Exception as exc:
            raise _failed(what, exc) from exc
        return _check_metrics(f"{what}'s result", out)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AppError(f"App.{name} must be a whole number >= 1, got {_kind(value)}")


@dataclass(frozen=True, kw_only=True)
class App:
    """A federated-learning app: what fedstore needs to run your model (see the module docs).

    Only ``initial`` and a training function (``train`` or ``trainer``) are
    required to train; the rest has defaults. Fields are checked on
    construction (and by :func:`dataclasses.replace`); a bad one raises
    :class:`~fedstore.errors.AppError` naming it.
    """

    #: starting weights: a dict of named numpy arrays, or a function returning one
    initial: Arrays | Callable[[], Arrays]
    #: ``train(arrays, round, config) -> (arrays, num_samples, metrics)``, the same
    #: function for every trainer
    train: TrainFn | None = None
    #: ``trainer(context) -> train``: a training function per trainer (instead of ``train``)
    trainer: TrainerFactory | None = None
    #: ``evaluate(arrays) -> metrics``, run by the aggregator on each new global model
    evaluate: EvaluateFn | None = None
    #: a registered strategy name (with ``strategy_settings``) or a Strategy instance
    strategy: str | Strategy = "fedavg"
    strategy_settings: Mapping[str, str | int | float] = field(default_factory=dict)
    #: default number of rounds
    rounds: int = 10
    #: updates that close a round: a count, or text such as ``"2,5:3"`` (2, then 3 from round 5)
    quorum: int | str = 1
    #: fewest updates a round may close with once ``round_timeout`` passed
    min_updates: int = 1
    #: seconds a round waits for its quorum
    round_timeout: float = 30.0
    #: how trainers send updates: float32, float16, int8, int8:BLOCK or topk:FRACTION
    update_encoding: str = "float32"
    #: a short name for progress lines and reports ("" : the name it was loaded by)
    name: str = ""
    #: extra metadata stored in every global checkpoint (deterministic text)
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: ``baseline(rounds)``: a non-federated reference's metrics per round (simulate's report)
    baseline: BaselineFn | None = None
    #: minimum final values of evaluation metrics that simulate's report checks
    targets: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.initial, Mapping) and not callable(self.initial):
            raise AppError(
                "App.initial must be a dict of numpy arrays or a function returning one, "
                f"got {_kind(self.initial)}"
            )
        if isinstance(self.initial, Mapping):
            _check_arrays("App.initial", self.initial)
        if self.train is not None and self.trainer is not None:
            raise AppError("give App.train or App.trainer, not both")
        if self.train is not None:
            _check_callable("train", self.train, 3, "train(arrays, round, config)")
        if self.trainer is not None:
            _check_callable("trainer", self.trainer, 1, "trainer(context) returning train")
        if self.evaluate is not None:
            _check_callable("evaluate", self.evaluate, 1, "evaluate(arrays)")
        if self.baseline is not None:
            _check_callable("baseline", self.baseline, 1, "baseline(rounds)")
        self._check_strategy()
        _positive_int("rounds", self.rounds)
        _positive_int("min_updates", self.min_updates)
        self._check_quorum()
        t = self.round_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise AppError(f"App.round_timeout must be a number of seconds > 0, got {_kind(t)}")
        from fedstore.federation.update_encoding import UpdateEncoding

        if not isinstance(self.update_encoding, str):
            raise AppError(f"App.update_encoding must be text, got {_kind(self.update_encoding)}")
        try:
            UpdateEncoding.parse(self.update_encoding)
        except FedstoreError as exc:
            raise AppError(f"App.update_encoding: {exc}") from None
        if not isinstance(self.name, str):
            raise AppError(f"App.name must be text, got {_kind(self.name)}")
        if not isinstance(self.metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()
        ):
            raise AppError("App.metadata must be a dict of text to text")
        if not isinstance(self.targets, Mapping):
            raise AppError(f"App.targets must be a dict of metric -> number, got {self.targets!r}")
        _check_metrics("App.targets", self.targets)

    def _check_strategy(self) -> None:
        s, settings = self.strategy, self.strategy_settings
        if not isinstance(settings, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in settings.items()
        ):
            raise AppError("App.strategy_settings must be a dict of name -> text or number")
        if isinstance(s, str):
            if not s.strip():
                raise AppError("App.strategy is empty: name one (fedavg, median, ...)")
            return
        from fedstore.federation.strategies.base import Strategy

        if not isinstance(s, Strategy):
            raise AppError(
                f"App.strategy must be a strategy name or a Strategy instance, got {_kind(s)}"
            )
        if settings:
            raise AppError("App.strategy_settings go with a strategy name, not a Strategy instance")

    def _check_quorum(self) -> None:
        q = self.quorum
        if isinstance(q, str):
            from fedstore.federation.settings import QuorumSchedule

            try:
                QuorumSchedule.parse(q)
            except ValueError as exc:
                raise AppError(f"App.quorum: {exc}") from None
        else:
            _positive_int("quorum", q)

    # -- what the runners call -----------------------------------------------------------
    @property
    def label(self) -> str:
        """The app's name for messages (``name``, else ``"app"``)."""
        return self.name or "app"

    @property
    def can_train(self) -> bool:
        return self.train is not None or self.trainer is not None

    @property
    def strategy_name(self) -> str:
        s = self.strategy
        return s.strip() if isinstance(s, str) else str(getattr(s, "name", type(s).__name__))

    def with_name(self, name: str) -> App:
        """This app named ``name`` unless it names itself."""
        return self if self.name else replace(self, name=name)

    def initial_arrays(self) -> dict[str, NDArray]:
        """The starting weights (``initial``, called if it is a function), checked."""
        value: object = self.initial
        if not isinstance(value, Mapping):
            init: Callable[[], Arrays] = self.initial  # type: ignore[assignment]
            try:
                value = init()
            except Exception as exc:
                raise _failed(f"app {self.label}: initial()", exc) from exc
        return _check_arrays(f"app {self.label}: initial weights", value)

    def train_fn(self, context: TrainerContext | None = None) -> TrainFn:
        """The checked training function for the trainer ``context`` describes.

        ``train`` as is, or what ``trainer(context)`` returns (checked to be a
        ``train(arrays, round, config)``). AppError when the app has neither.
        """
        ctx = context or TrainerContext()
        fn: object = self.train
        if fn is None:
            if self.trainer is None:
                raise AppError(
                    f"app {self.label} cannot train: it has no App.train (or App.trainer) function"
                )
            try:
                fn = self.trainer(ctx)
            except Exception as exc:
                what = f"app {self.label}: trainer(index {ctx.index} of {ctx.count})"
                raise _failed(what, exc) from exc
            try:
                _check_callable("train", fn, 3, "train(arrays, round, config)")
            except AppError as exc:
                raise AppError(
                    f"app {self.label}: App.trainer returned a bad train: {exc}"
                ) from None
        train: TrainFn = fn  # type: ignore[assignment]
        return _CheckedTrain(train, self.label)

    def evaluate_fn(self) -> EvaluateFn | None:
        """The checked ``evaluate``, or None."""
        return None if self.evaluate is None else _CheckedEvaluate(self.evaluate, self.label)

    def baseline_metrics(self, rounds: int) -> list[dict[str, float]]:
        """``baseline(rounds)``, checked: one metrics dict per round ([] without a baseline)."""
        if self.baseline is None:
            return []
        try:
            curve = self.baseline(rounds)
        except Exception as exc:
            raise _failed(f"app {self.label}: baseline({rounds})", exc) from exc
        if not isinstance(curve, Sequence) or isinstance(curve, str | bytes):
            raise AppError(f"app {self.label}: baseline must return a list, got {_kind(curve)}")
        return [
            _check_metrics(f"app {self.label}: baseline round {i}", m)
            for i, m in enumerate(curve, 1)
        ]

    def load_strategy(
        self, name: str | None = None, settings: Mapping[str, str | int | float] | None = None
    ) -> Strategy:
        """The strategy to aggregate with: ``name``/``settings`` if given, else the app's.

        An unknown name or bad setting is a :class:`~fedstore.errors.StrategyError`.
        """
        from fedstore.federation.strategies import load_strategy

        if name:
            return load_strategy(name, settings or {})
        if isinstance(self.strategy, str):
            merged = {**self.strategy_settings, **(settings or {})}
            return load_strategy(self.strategy, merged)
        if settings:
            return load_strategy(self.strategy.name, {**self.strategy.settings(), **settings})
        return self.strategy


def load_app(spec: str, *, config: Mapping[str, str] | None = None, cwd: Path | None = None) -> App:
    """The App named by ``spec``: ``MODULE:OBJ`` or ``path/to/file.py:OBJ`` (OBJ default ``app``).

    See :func:`fedstore.app_loader.load_app`; ``config`` are keyword
    arguments for an OBJ that is a function returning an App.
    """
    from fedstore.app_loader import load_app as load

    return load(spec, config=config, cwd=cwd)
