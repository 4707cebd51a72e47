"""Aggregation strategies: the :class:`Strategy` protocol, the built-ins, and lookup by name.

* :mod:`~fedstore.federation.strategies.base` - the protocol, the values it
  exchanges (:class:`Update`, :class:`RoundContext`, :class:`Aggregate`,
  :class:`StrategyState`) and :class:`BaseStrategy` with the defaults;
* :mod:`~fedstore.federation.strategies.builtin` - :class:`FedAvg`,
  :class:`Median`, :class:`TrimmedMean` (deterministic);
* :mod:`~fedstore.federation.strategies.fedadam` - :class:`FedAdam`, a server
  optimiser whose moments travel with the checkpoints;
* :mod:`~fedstore.federation.strategies.registry` - the ``fedstore.strategies``
  entry-point group: :func:`load_strategy` (name + settings -> strategy),
  :func:`available_strategies`.

Write your own by subclassing :class:`BaseStrategy` and registering it (see
docs/FEDERATION.md, "Strategies").
"""

from fedstore.federation.strategies.base import (
    Aggregate,
    BaseStrategy,
    ConfigValue,
    Failure,
    RoundConfig,
    RoundContext,
    Strategy,
    StrategyState,
    Update,
    weighted_mean_metrics,
)
from fedstore.federation.strategies.builtin import FedAvg, Median, TrimmedMean
from fedstore.federation.strategies.fedadam import FedAdam
from fedstore.federation.strategies.registry import (
    ENTRY_POINT_GROUP,
    StrategyInfo,
    available_strategies,
    load_strategy,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Aggregate",
    "BaseStrategy",
    "ConfigValue",
    "Failure",
    "FedAdam",
    "FedAvg",
    "Median",
    "RoundConfig",
    "RoundContext",
    "Strategy",
    "StrategyInfo",
    "StrategyState",
    "TrimmedMean",
    "Update",
    "available_strategies",
    "load_strategy",
    "weighted_mean_metrics",
]
