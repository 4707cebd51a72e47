"""Federated learning over fedstore: rounds, trainers, aggregator, strategies, built-in task.

Modules:

* :mod:`~fedstore.federation.api` - the Python API for your own model
  (``train(arrays, round)`` and ``evaluate(arrays)`` over dicts of numpy arrays);
* :mod:`~fedstore.federation.roles` - the round protocol (aggregator and trainer loops);
* :mod:`~fedstore.federation.aggregators` - FedAvg, coordinate-wise median, trimmed mean;
* :mod:`~fedstore.federation.validation` - admission of updates into a round;
* :mod:`~fedstore.federation.messages` - the ``fed-learn`` wire format;
* :mod:`~fedstore.federation.task_digits` - the built-in digits task (scikit-learn data,
  numpy model);
* :mod:`~fedstore.federation.report` - the report directory of a run.
"""
