"""Federated learning over fedstore: rounds, trainers, aggregator, strategies, built-in task.

Modules:

* :mod:`~fedstore.federation.api` - the Python API for your own model
  (``train(arrays, round)`` and ``evaluate(arrays)`` over dicts of numpy arrays);
* :mod:`~fedstore.federation.roles` - the round protocol, re-exporting its parts:
  :mod:`~fedstore.federation.aggregator` and :mod:`~fedstore.federation.trainer`
  (the two loops), :mod:`~fedstore.federation.settings` and
  :mod:`~fedstore.federation.events` (what the loops report);
* :mod:`~fedstore.federation.aggregators` - FedAvg, coordinate-wise median, trimmed mean;
* :mod:`~fedstore.federation.validation` - admission of updates into a round;
* :mod:`~fedstore.federation.messages` - the ``fed-learn`` wire format;
* :mod:`~fedstore.federation.transport` - what the roles need from a peer
  (:class:`~fedstore.federation.transport.FederationPeer`), implemented over a
  node by :mod:`~fedstore.federation.nodepeer` and in memory by
  :mod:`~fedstore.federation.fake` (tests).

The built-in digits task, the demo's worker process and its report live in
:mod:`fedstore.demos` (they need the ``demo`` extra: scikit-learn, matplotlib).

See docs/FEDERATION.md.
"""
