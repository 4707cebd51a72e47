"""fedstore checkpoints: named numpy arrays plus string metadata, as bytes.

Quick use::

    from fedstore.format import encode, decode, inspect

    blob = encode({"w": weights, "b": bias}, {"round": "3", "model": "digits-mlp"})
    ckpt = decode(blob)            # Checkpoint(arrays={...}, metadata={...})
    print(inspect(blob))           # header facts, tensors, sizes; no full decompression

Layout of a checkpoint (version 1)::

    fixed header (28 bytes)   magic b"FSCK", version, codec (zstd), flags,
                              raw size u64, frame size u64, metadata length u32
    metadata                  canonical JSON object str -> str
    one zstd frame            decompresses to exactly `raw size` bytes:
        u64 N                 safetensors header length
        N bytes               safetensors header (the tensor index), canonical JSON
        tensor data           each tensor's bytes; if flag SHUFFLE is set, those of
                              tensors with itemsize > 1 are byte-shuffled in blocks
                              of 2**20 elements (see fedstore.format.shuffle)

The decompressed payload is a genuine safetensors file once the shuffle is
undone (with the flag clear it is one as is), and the container is nothing
more than sizes and metadata around it. Details of each layer:
:mod:`~fedstore.format.container` (fixed header, metadata, size cap),
:mod:`~fedstore.format.tensor_index` (safetensors index, canonical order,
validation), :mod:`~fedstore.format.shuffle` (byte shuffle) and
:mod:`~fedstore.format.zstd_frame` (compression parameters, frame checks).

Guarantees:

* Never pickle; decode only ever builds numpy arrays of a fixed set of
  dtypes (bool, u/int 8-64, float 16/32/64) from validated byte ranges.
* Deterministic encoding: same arrays and metadata give the same bytes, in
  any process (tensor order, metadata order, byte order, the chunks fed to
  zstd and its parameters are all fixed; zstd runs single-threaded). Decode
  refuses non-canonical headers and indexes, so the container around a given
  zstd frame has exactly one form. (Byte-identical output across *versions*
  of the bundled libzstd is not promised by zstd; pin ``zstandard`` where
  CIDs must be reproduced years later.)
* Bounded decode: the declared raw size is checked against the cap
  (``max_decoded_size``, $FEDSTORE_MAX_CHECKPOINT_BYTES, default 8 GiB) and
  against the zstd frame's own content size before any decompression, and
  decompression never produces more than that. Every malformed input raises
  :class:`~fedstore.errors.FormatError` (:class:`~fedstore.errors.SizeLimitError`
  for the cap).

Pure: no I/O and no trio; async callers run encode/decode in a worker thread.
File helpers for .npz/.safetensors live in :mod:`fedstore.format.weight_files`.
"""

from fedstore.format.codec import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointInfo,
    TensorInfo,
    decode,
    encode,
    inspect,
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
    "describe_foreign",
    "encode",
    "inspect",
]
