"""fedstore checkpoints: named numpy arrays plus string metadata, as bytes.

Quick use::

    from fedstore.format import encode, decode, inspect

    blob = encode({"w": weights, "b": bias}, {"round": "3", "model": "digits-mlp"})
    ckpt = decode(blob)            # Checkpoint(arrays={...}, metadata={...})
    print(inspect(blob))           # header facts, tensors, sizes; no full decompression

Layout of a checkpoint (version 2; version 1 is still read)::

    fixed header (28 bytes)   magic b"FSCK", version, codec (zstd), flags,
                              raw size u64, piece count u64, metadata length u32
    metadata                  canonical JSON object str -> str
    pieces                    the payload below, cut at fixed points; each piece
                              is u8 method + u32 size + raw bytes or one zstd frame
    payload (logical):
        u64 N                 safetensors header length
        N bytes               safetensors header (the tensor index), canonical JSON
        tensor data           each tensor's bytes; if flag SHUFFLE is set, those of
                              tensors with itemsize > 1 are byte-shuffled in blocks
                              of 2**20 elements (see fedstore.format.shuffle), one
                              piece per byte plane of each block

Version 1 stored the same payload as one zstd frame. Version 2 stores each
plane of each block (or each 1 MiB of unshuffled data) as its own piece, raw
when it is noise (the low mantissa bytes of float weights) and zstd when a
sample says it compresses, so noise is never fed to zstd and independent
pieces go to worker threads. The decompressed payload is a genuine
safetensors file once the shuffle is undone (with the flag clear it is one
as is). Details of each layer: :mod:`~fedstore.format.container` (fixed
header, metadata, size cap), :mod:`~fedstore.format.tensor_index`
(safetensors index, canonical order, validation),
:mod:`~fedstore.format.shuffle` (byte shuffle),
:mod:`~fedstore.format.pieces` (version 2 pieces),
:mod:`~fedstore.format.parallel` (worker threads) and
:mod:`~fedstore.format.zstd_frame` (compression parameters; version 1 frames).

Guarantees:

* Never pickle; decode only ever builds numpy arrays of a fixed set of
  dtypes (bool, u/int 8-64, float 16/32/64) from validated byte ranges.
* Deterministic encoding: same arrays and metadata give the same bytes, in
  any process and with any number of worker threads (tensor order, metadata
  order, byte order, the piece boundaries, the raw-or-zstd choice, which
  depends on each piece's bytes alone, and zstd's parameters are all fixed;
  each zstd frame is made by one thread from one piece). Decode refuses
  non-canonical headers and indexes. (Byte-identical output across *versions*
  of the bundled libzstd is not promised by zstd; pin ``zstandard`` where
  CIDs must be reproduced years later.)
* Bounded decode: the declared raw size is checked against the cap
  (``max_decoded_size``, $FEDSTORE_MAX_CHECKPOINT_BYTES, default 8 GiB) and
  against the zstd frame's own content size before any decompression, and
  decompression never produces more than that. Every malformed input raises
  :class:`~fedstore.errors.FormatError` (:class:`~fedstore.errors.SizeLimitError`
  for the cap).
* Integrity: zstd pieces carry zstd's checksum; raw pieces carry none of
  their own. A checkpoint's integrity is its CID, which every path that
  reads peer or disk data verifies before decoding.

No trio; async callers run encode/decode in a worker thread. I/O only in
``encode_to`` (writes to the stream it is given), ``read_file`` and
``decode_file``.
File helpers for .npz/.safetensors live in :mod:`fedstore.format.weight_files`.
"""

from fedstore.format.codec import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointInfo,
    TensorInfo,
    decode,
    decode_file,
    encode,
    encode_to,
    inspect,
    read_file,
)
from fedstore.format.container import (
    DEFAULT_MAX_DECODED_SIZE,
    MAGIC,
    MAX_DECODED_SIZE_ENV,
    describe_foreign,
)

__all__ = [
    "DEFAULT_MAX_DECODED_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_DECODED_SIZE_ENV",
    "Checkpoint",
    "CheckpointInfo",
    "TensorInfo",
    "decode",
    "decode_file",
    "describe_foreign",
    "encode",
    "encode_to",
    "inspect",
    "read_file",
]
