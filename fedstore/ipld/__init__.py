"""Content addressing, as IPFS does it: CIDs, dag-pb/UnixFS blocks, CAR files.

Pure code (no trio, no network; the only I/O is reading a file a caller
names), used by the core and by plugins alike:

* :mod:`~fedstore.ipld.cidstr` - CID strings and binary form, multibase
  (base58btc, base32), varints and multihashes; parsing and equality;
* :mod:`~fedstore.ipld.unixfs` - the dag-pb and UnixFS protobuf codec
  (encoding and strict decoding of one block);
* :mod:`~fedstore.ipld.cid` - the CID ``ipfs add`` gives a file (streaming
  builder, Kubo's balanced layout) and :class:`CidVerifier`;
* :mod:`~fedstore.ipld.blocks` - a file's DAG as individual blocks
  (what bitswap moves);
* :mod:`~fedstore.ipld.car` - CARv1 writing and fully verified reading.

The names most callers need are re-exported here.
"""

from __future__ import annotations

from fedstore.ipld.cid import (
    CidBuilder,
    CidVerifier,
    DagParams,
    ParsedCid,
    cid_of_bytes,
    cid_of_file,
    parse_cid,
    verify_bytes,
)
from fedstore.ipld.cidstr import same_cid

__all__ = [
    "CidBuilder",
    "CidVerifier",
    "DagParams",
    "ParsedCid",
    "cid_of_bytes",
    "cid_of_file",
    "parse_cid",
    "same_cid",
    "verify_bytes",
]
