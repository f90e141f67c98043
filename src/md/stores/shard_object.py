"""Whole shard objects encoded in one pass, byte for byte what zarr's sharding codec writes.

Why: writing a shard of 16 per-sample chunks through zarr 3.1's codec pipeline costs ~10x
the compression itself (measured on a cpu-demo teacher's shard, 1.2 MB of float32
targets: 53-79 ms through ``Array.setitem`` against 6 ms of zstd + crc32c). The pipeline
hops to a thread pool and back for every inner chunk and every codec, and reads the shard
before rewriting it even when the write covers all of it. `md cache-teacher` writes every
shard whole, so none of that machinery is needed: `encode_shard_object` compresses each
sample's chunk, appends its crc32c, and appends the index, exactly as the ``sharding_indexed``
codec lays them out (zarr v3 spec; index at the end, morton order, which for our
(S, 1, 1, ...) chunk grid is sample order). Reads still go through zarr.

Reads of such arrays take the same shortcut in reverse (`decode_index`, `decode_chunk`): the
store fetches the (cached) shard index and each sample's byte range concurrently, then
verifies and decompresses them in the caller's thread; through zarr a 16-sample batch of a
width-1 teacher's targets took 0.83 s, nearly all of it pipeline overhead.

Only arrays whose metadata is exactly the layout md creates qualify (`ShardLayout.of`);
anything else keeps zarr's own write and read paths. tests/stores/test_shard_object.py checks the bytes
against zarr's for full and partial shards of every dtype we store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import google_crc32c  # zarr's own crc32c implementation (a zarr dependency)
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import (
    BytesCodec,
    Crc32cCodec,
    ShardingCodec,
    ShardingCodecIndexLocation,
    ZstdCodec,
)
from zarr.codecs.bytes import Endian

_EMPTY = np.uint64(2**64 - 1)  # index entry of an absent inner chunk (offset and length)


@dataclass(frozen=True)
class ShardLayout:
    """One sharded array's layout: shards of `shard_len` one-sample chunks, each
    ``zstd(level, checksum) -> crc32c`` (or, `compressed` False, ``crc32c`` alone: the raw
    little-endian bytes), index ``bytes(little) -> crc32c`` at the end."""

    shard_len: int  # samples (inner chunks) per shard
    sample_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    level: int
    checksum: bool
    compressed: bool = True

    @classmethod
    def of(cls, array: zarr.Array) -> ShardLayout | None:
        """The layout of `array` if it is exactly the one md creates, else None."""
        meta = array.metadata
        codecs: list[Any] = list(getattr(meta, "codecs", ()))
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        inner: list[Any] = list(sharding.codecs)
        little = (Endian.little, None)
        zstd = len(inner) == 3 and isinstance(inner[1], ZstdCodec)
        if not (
            len(inner) in (2, 3)
            and isinstance(inner[0], BytesCodec)
            and inner[0].endian in little
            and (zstd or len(inner) == 2)
            and isinstance(inner[-1], Crc32cCodec)
            and len(sharding.index_codecs) == 2
            and isinstance(sharding.index_codecs[0], BytesCodec)
            and sharding.index_codecs[0].endian in little
            and isinstance(sharding.index_codecs[1], Crc32cCodec)
            and sharding.index_location == ShardingCodecIndexLocation.end
        ):
            return None
        shard_shape = tuple(array.shards or ())
        chunk_shape = tuple(sharding.chunk_shape)
        dtype = np.dtype(array.dtype)
        if (
            len(shard_shape) < 1
            or chunk_shape != (1, *shard_shape[1:])
            or shard_shape[1:] != tuple(array.shape[1:])
            or dtype.kind not in "biuf"
            or getattr(array, "order", "C") != "C"
        ):
            return None
        return cls(
            shard_len=shard_shape[0],
            sample_shape=shard_shape[1:],
            dtype=dtype,
            level=inner[1].level if zstd else 0,
            checksum=bool(inner[1].checksum) if zstd else False,
            compressed=zstd,
        )

    def encode(self, values: np.ndarray) -> bytes:
        """The shard object holding `values` (n <= shard_len samples, the shard's first n
        inner chunks; the rest absent, as for the last shard of an array)."""
        if values.shape[1:] != self.sample_shape or not 1 <= len(values) <= self.shard_len:
            raise ValueError(
                f"shard of shape {values.shape} does not fit shards of {self.shard_len} x "
                f"{self.sample_shape}"
            )
        data = np.ascontiguousarray(values, dtype=self.dtype.newbyteorder("<"))
        zstd = Zstd(level=self.level, checksum=self.checksum) if self.compressed else None
        index = np.full((self.shard_len, 2), _EMPTY, dtype="<u8")
        pieces: list[bytes] = []
        offset = 0
        for i in range(len(data)):
            compressed = zstd.encode(data[i]) if zstd is not None else data[i].tobytes()
            piece = compressed + _crc32c(compressed)
            index[i] = (offset, len(piece))
            offset += len(piece)
            pieces.append(piece)
        index_bytes = index.tobytes()
        pieces.append(index_bytes + _crc32c(index_bytes))
        return b"".join(pieces)

    @property
    def index_nbytes(self) -> int:
        """Bytes of the index at the end of a shard object (offset and length per chunk, crc)."""
        return 16 * self.shard_len + 4

    def decode_index(self, data: bytes) -> np.ndarray:
        """A shard object's index bytes -> (shard_len, 2) uint64 (offset, length); absent
        chunks are 2**64 - 1. A checksum mismatch raises ValueError."""
        if len(data) != self.index_nbytes:
            raise ValueError(f"shard index of {len(data)} bytes, expected {self.index_nbytes}")
        _check_crc32c(data, "shard index")
        return np.frombuffer(data[:-4], dtype="<u8").reshape(self.shard_len, 2)

    def decode_chunk(self, data: bytes) -> np.ndarray:
        """One inner chunk's bytes (zstd frame + crc32c) -> the sample's array. A checksum
        mismatch or a wrong size raises ValueError."""
        _check_crc32c(data, "chunk")
        raw = data[:-4]
        if self.compressed:
            raw = Zstd(level=self.level, checksum=self.checksum).decode(raw)
        values = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))
        if values.size != int(np.prod(self.sample_shape)):
            raise ValueError(f"chunk of {values.size} values, expected {self.sample_shape}")
        return values.reshape(self.sample_shape)

    def decode_chunk_into(self, data: bytes, out: np.ndarray) -> None:
        """`decode_chunk` straight into `out` (one sample, C-contiguous, this layout's dtype
        and sample shape): the crc32c is checked over the whole chunk in one pass (no copy of
        the compressed bytes) and zstd writes into `out` (no intermediate bytes object). A
        checksum mismatch or a frame of another size raises ValueError."""
        if out.shape != self.sample_shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"buffer {out.dtype} {out.shape} does not fit {self.sample_shape}")
        if len(data) < 4 or google_crc32c.value(data) != _CRC32C_RESIDUE:
            raise ValueError("chunk: stored and computed crc32c checksums do not match")
        frame = memoryview(data)[:-4]
        if not self.compressed:
            if len(frame) != out.nbytes:
                raise ValueError(f"chunk of {len(frame)} bytes, expected {out.nbytes}")
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(frame, dtype=np.uint8)
            return
        if frame_content_size(frame) != out.nbytes:  # zstd would fill a larger frame's head
            raise ValueError(f"chunk of {frame_content_size(frame)} bytes, expected {out.nbytes}")
        Zstd(level=self.level, checksum=self.checksum).decode(frame, out=out.reshape(-1))


# crc32c over data followed by its own little-endian crc32c is this constant for any data:
# checking a chunk against it reads the chunk once and copies nothing.
_CRC32C_RESIDUE = 0x48674BC7


def frame_content_size(frame: bytes | memoryview) -> int | None:
    """The decompressed size a zstd frame header declares (RFC 8878 3.1.1.1), or None when
    the header does not declare one (or is not a zstd frame)."""
    if len(frame) < 6 or bytes(frame[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    desc = frame[4]
    fcs_flag, single, did_flag = desc >> 6, (desc >> 5) & 1, desc & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(frame) < pos + size:
        return None
    value = int.from_bytes(bytes(frame[pos : pos + size]), "little")
    return value + 256 if size == 2 else value


def _check_crc32c(data: bytes, what: str) -> None:
    if len(data) < 4 or _crc32c(data[:-4]) != data[-4:]:
        raise ValueError(f"{what}: stored and computed crc32c checksums do not match")


def _crc32c(data: bytes) -> bytes:
    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()
