"""Federated learning over fedstore: rounds, trainers, aggregator, strategies.

Modules:

* :mod:`~fedstore.federation.api` - the Python API for your own model
  (``train(arrays, round, config)`` and ``evaluate(arrays)`` over dicts of
  numpy arrays): :func:`~fedstore.federation.api.aggregate` /
  :func:`~fedstore.federation.api.train` inside trio,
  :func:`~fedstore.federation.api.run_aggregator` /
  :func:`~fedstore.federation.api.run_trainer` blocking;
* :mod:`~fedstore.federation.aggregator` and :mod:`~fedstore.federation.trainer` -
  the round protocol's two loops over a peer
  (:func:`~fedstore.federation.aggregator.lead_rounds`,
  :func:`~fedstore.federation.trainer.follow_rounds`), with their
  :mod:`~fedstore.federation.settings` and :mod:`~fedstore.federation.events`;
* :mod:`~fedstore.federation.strategies` - the ``Strategy`` protocol,
  FedAvg, median, trimmed mean, FedAdam, and lookup by name through the
  ``fedstore.strategies`` entry-point group;
* :mod:`~fedstore.federation.global_model` - a round's global model from its
  updates: deterministic aggregation, checkpoint metadata, strategy state;
* :mod:`~fedstore.federation.collect` - the aggregator's inbox: a round's
  updates taken off the topic, fetched, decoded and validated;
* :mod:`~fedstore.federation.validation` - admission of updates into a round;
* :mod:`~fedstore.federation.messages` - the ``fed-learn`` wire format;
* :mod:`~fedstore.federation.update_codec` - lossy update encodings (float16,
  int8, top-k) with the trainer's error feedback and a strict decoder;
* :mod:`~fedstore.federation.transport` - what the loops need from a peer
  (:class:`~fedstore.federation.transport.FederationPeer`), implemented over a
  node by :mod:`~fedstore.federation.nodepeer` and in memory by
  :mod:`~fedstore.federation.fake` (tests).

The built-in digits task, the demo's worker process and its report live in
:mod:`fedstore.demos` (they need the ``demo`` extra: scikit-learn, matplotlib).

See docs/FEDERATION.md.
"""
