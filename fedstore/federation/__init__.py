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
* :mod:`~fedstore.federation.task_digits` - the built-in digits task (scikit-learn data,
  numpy model);
* :mod:`~fedstore.federation.report` - the report directory of a run;
* :mod:`~fedstore.federation.transport` - what the roles need from a peer
  (:class:`~fedstore.federation.transport.FederationPeer`), implemented over a
  node by :mod:`~fedstore.federation.nodepeer` and in memory by
  :mod:`~fedstore.federation.fake` (tests);
* :mod:`~fedstore.federation.worker` - one process of the demo
  (``python -m fedstore.federation.worker``).

See docs/FEDERATION.md.
"""
