"""Helpers for federation tests with a manifest: keys, manifests, trainers (tests/ is on path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from libp2p.crypto.ed25519 import create_new_key_pair

from fedstore.federation.manifest import Manifest, Member, sign_manifest
from fedstore.federation.membership import Membership
from fedstore.federation.signing import KeySigner

Arrays = dict[str, npt.NDArray[np.generic]]
MODEL: Arrays = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}
BOTH = frozenset({"aggregator", "trainer"})
TRAINER = frozenset({"trainer"})
AGGREGATOR = frozenset({"aggregator"})


def new_signer() -> KeySigner:
    return KeySigner(create_new_key_pair())


def make_membership(
    owner: KeySigner,
    roles: Mapping[str, frozenset[str]],
    **settings: Any,
) -> Membership:
    """A signed manifest over ``roles`` (peer id -> roles), as a Membership."""
    members = tuple(sorted((Member(p, r) for p, r in roles.items()), key=lambda m: m.peer))
    settings.setdefault("name", "test federation")
    manifest = Manifest(owner=owner.peer_id, members=members, **settings)
    return Membership(sign_manifest(manifest, owner))


def shift_trainer(delta: float, samples: int = 10):  # type: ignore[no-untyped-def]
    """A stand-in training function: adds ``delta`` to every weight."""

    def train(arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Any):  # type: ignore[no-untyped-def]
        return (
            {k: (v + np.float32(delta)).astype(v.dtype) for k, v in arrays.items()},
            samples,
            {"delta": delta},
        )

    return train


def scaled_trainer(factor: float, samples: int = 10):  # type: ignore[no-untyped-def]
    """A poisoned member: sends ``factor`` times the honest step of +1 (sign flip: -1)."""

    def train(arrays: Mapping[str, npt.NDArray[np.generic]], rnd: int, config: Any):  # type: ignore[no-untyped-def]
        return (
            {k: (v + np.float32(factor)).astype(v.dtype) for k, v in arrays.items()},
            samples,
            {},
        )

    return train


def kinds(events: Sequence[Any], name: str) -> list[Any]:
    return [e for e in events if type(e).__name__ == name]


def signed_update(
    signer: KeySigner,
    federation: str,
    session: str,
    round: int,
    payload: bytes,
    *,
    base_cid: str = "bafkreibnoelefnzgwbcacyt4vh52ymxvzbjq7mmqhtcnwarfq4lzegsiqe",
    num_samples: int = 100,
) -> bytes:
    """A well-formed federated UPDATE signed by ``signer`` (member or not)."""
    from dataclasses import replace

    from fedstore.federation.messages import UpdateMessage
    from fedstore.federation.signing import UPDATE_DOMAIN, encode_signature
    from fedstore.ipld.cid import cid_of_bytes

    msg = UpdateMessage(
        round,
        signer.peer_id,
        num_samples,
        payload,
        base_cid=base_cid,
        federation=federation,
        session=session,
        payload_cid=cid_of_bytes(payload, 1),
    )
    sig = signer.sign(UPDATE_DOMAIN, msg.claim())
    return replace(msg, sig=encode_signature(sig)).encode()


# -- real nodes over loopback -------------------------------------------------------------


def node_config(
    tmp_path: Any,
    name: str,
    *,
    bootstrap: Sequence[str] = (),
    backends: Sequence[str] = ("filesystem",),
    role: str = "trainer",
    extra: Mapping[str, str] | None = None,
) -> Any:
    """A NodeConfig for a node ``name`` under ``tmp_path`` on 127.0.0.1 (shared fs root)."""
    from fedstore.federation import api

    settings = {
        "FEDSTORE_FS_ROOT": str(tmp_path / "objects"),
        "FEDSTORE_HEARTBEAT": "0.2",
        "FEDSTORE_REANNOUNCE_INTERVAL": "0",
        **(extra or {}),
    }
    return api.make_node_config(
        role=role,
        data_dir=tmp_path / name,
        bootstrap=bootstrap,
        backends=list(backends),
        settings=settings,
        environ={},
    )


def identity_of(tmp_path: Any, name: str) -> KeySigner:
    """The signer of node ``name``'s identity (created now if the node never ran)."""
    from fedstore.federation.signing import load_signer

    return load_signer(tmp_path / name)
