"""Find strategies by name through the ``fedstore.strategies`` entry-point group.

Strategies are plugins, found exactly like storage backends: any installed
distribution can register one with::

    [project.entry-points."fedstore.strategies"]
    my-strategy = "my_package:MyStrategy"

where ``MyStrategy`` is a class (or any callable) whose instances follow the
:class:`~fedstore.federation.strategies.base.Strategy` protocol, whose
``name`` is the registered name, and whose settings are its keyword
parameters. fedstore's own (``fedavg``, ``median``, ``trimmed-mean``,
``fedadam``) are registered the same way. Errors are
:class:`~fedstore.errors.StrategyError`: an unknown name lists the installed
ones, a plugin that fails to import names the plugin and the cause, and a
bad setting names the strategy, the setting and what it accepts.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stevedore import driver
from stevedore.exception import MultipleMatches, NoMatches

from fedstore.errors import FedstoreError, StrategyError
from fedstore.federation.strategies.base import Strategy

__all__ = [
    "ENTRY_POINT_GROUP",
    "StrategyInfo",
    "available_strategies",
    "load_strategy",
    "load_strategy_factory",
    "strategy_settings",
]

ENTRY_POINT_GROUP = "fedstore.strategies"

#: A setting as given by a user: typed (Python, TOML) or text (command line).
SettingValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class StrategyInfo:
    """An installed strategy, as its entry point declares it (nothing imported)."""

    name: str
    target: str
    distribution: str | None
    version: str | None

    @property
    def origin(self) -> str:
        dist = (
            f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        )
        return f"{self.target} ({dist})"


def available_strategies() -> dict[str, StrategyInfo]:
    """Installed strategies by name, sorted, without importing any of them."""
    found: dict[str, StrategyInfo] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.setdefault(
            ep.name,
            StrategyInfo(
                name=ep.name,
                target=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            ),
        )
    return dict(sorted(found.items()))


def _raise_load_failure(
    manager: object, ep: importlib.metadata.EntryPoint, err: BaseException
) -> None:
    raise StrategyError(
        f"strategy plugin {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}: {err}",
        strategy=ep.name,
    ) from err


def load_strategy_factory(name: str) -> Callable[..., object]:
    """Import what is registered as ``name`` (a class or factory); StrategyError if impossible."""
    if not name or not name.strip():
        raise StrategyError("empty strategy name")
    name = name.strip()
    try:
        mgr: driver.DriverManager[Callable[..., object]] = driver.DriverManager(
            namespace=ENTRY_POINT_GROUP,
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=_raise_load_failure,
            on_missing_entrypoints_callback=None,
        )
    except NoMatches:
        installed = ", ".join(available_strategies()) or "none"
        raise StrategyError(
            f"unknown strategy {name!r}; installed strategies: {installed}", strategy=name
        ) from None
    except MultipleMatches as exc:
        raise StrategyError(
            f"strategy name {name!r} is registered by more than one plugin: {exc}", strategy=name
        ) from exc
    factory = mgr.driver
    if not callable(factory):
        raise StrategyError(
            f"strategy plugin {name!r} is not a class or factory (got {factory!r})", strategy=name
        )
    return factory


def strategy_settings(factory: Callable[..., object]) -> dict[str, inspect.Parameter]:
    """The settings a strategy factory accepts: its keyword parameters by name."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def _coerce(name: str, setting: str, value: SettingValue, param: inspect.Parameter) -> object:
    """A text value (command line) as the type of the parameter's default; others as given."""
    if not isinstance(value, str):
        return value
    default = param.default
    text = value.strip()
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise StrategyError(
            f"strategy {name!r}: setting {setting} must be {kind}, got {value!r:.40}",
            strategy=name,
        ) from None
    return value


def load_strategy(name: str, settings: Mapping[str, SettingValue] | None = None) -> Strategy:
    """The strategy registered as ``name``, constructed with ``settings``.

    Text values (from a command line) are converted to the type of the
    setting's default. Raises :class:`~fedstore.errors.StrategyError` for an
    unknown or broken plugin, an unknown setting (the message lists the
    accepted ones), a value the strategy refuses, or a plugin whose objects
    are not strategies or carry another name.
    """
    name = name.strip() if name else name
    factory = load_strategy_factory(name)
    accepted = strategy_settings(factory)
    kwargs: dict[str, object] = {}
    for key, value in (settings or {}).items():
        if key not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            raise StrategyError(
                f"strategy {name!r} has no setting {key!r}; its settings: {known}", strategy=name
            )
        kwargs[key] = _coerce(name, key, value, accepted[key])
    try:
        obj = factory(**kwargs)
    except FedstoreError:
        raise
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"strategy {name!r}: {exc}", strategy=name) from exc
    except Exception as exc:
        raise StrategyError(
            f"strategy {name!r} failed to start: {type(exc).__name__}: {exc}", strategy=name
        ) from exc
    if not isinstance(obj, Strategy):
        raise StrategyError(
            f"strategy plugin {name!r} does not make a Strategy (got {type(obj).__name__}: it "
            "needs name, settings, configure_round, aggregate and aggregate_metrics)",
            strategy=name,
        )
    if obj.name != name:
        raise StrategyError(
            f"strategy plugin {name!r} makes a strategy named {obj.name!r}; the registered "
            "name and the strategy's name must be the same (it is recorded in checkpoints)",
            strategy=name,
        )
    return obj
