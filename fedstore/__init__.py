"""fedstore: checkpoint and model exchange for decentralised federated learning."""

from fedstore.errors import FedstoreError

__all__ = ["FedstoreError", "__version__"]
__version__ = "0.1.0"
