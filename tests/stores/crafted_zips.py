"""Hand-made zips for the unpack / verify refusal tests: compressed members, bombs, lying sizes.

`md store pack` only writes stored members with a manifest; these helpers write what a
careless tool or an attacker could send instead, without holding big members in memory.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path

from md.stores.pack import MANIFEST_NAME

MiB = 1 << 20
# Central directory file header: field -> (offset from its signature, struct format).
_CENTRAL = {"flags": (8, "<H"), "compressed": (20, "<I"), "uncompressed": (24, "<I")}


def members(path: Path) -> dict[str, bytes]:
    """Every member of a (small) zip, in order."""
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def manifest(files: Mapping[str, bytes], **sizes: int) -> bytes:
    """An md manifest of `files` (the manifest itself left out); `sizes` overrides sizes by
    name (use ``**{"a/b": 3}``), so a manifest can lie about them."""
    entries = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": sizes.get(name, len(data))}
        for name, data in files.items()
        if name != MANIFEST_NAME
    }
    doc = {"format": "md-store-pack", "version": 1, "files": entries}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def write_zip(path: Path, files: Mapping[str, bytes], deflate: Collection[str] = ()) -> Path:
    """Write `files` in order; those named in `deflate` DEFLATE-compressed, the rest stored."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(name, data, compress_type=method)
    return path


def zeros_digest(nbytes: int) -> str:
    """sha256 of `nbytes` zero bytes, hashed a MiB at a time."""
    digest, block = hashlib.sha256(), bytes(MiB)
    for start in range(0, nbytes, MiB):
        digest.update(block[: min(MiB, nbytes - start)])
    return digest.hexdigest()


def write_zeros_zip(
    path: Path, files: Mapping[str, bytes], name: str, nbytes: int, *, deflate: bool
) -> Path:
    """`files` (stored) plus member `name` of `nbytes` zeros, written a MiB at a time, and a
    manifest that tells the truth about all of them (so only the compression is wrong when
    `deflate`): a DEFLATE bomb is ~1000x smaller than what it inflates to."""
    entries = json.loads(manifest(files))
    entries["files"][name] = {"sha256": zeros_digest(nbytes), "size": nbytes}
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            if member != MANIFEST_NAME:
                zf.writestr(member, data)
        info = zipfile.ZipInfo(name)
        info.compress_type = method
        with zf.open(info, "w", force_zip64=True) as out:
            block = bytes(MiB)
            for start in range(0, nbytes, MiB):
                out.write(block[: min(MiB, nbytes - start)])
        zf.writestr(MANIFEST_NAME, json.dumps(entries, indent=1, sort_keys=True))
    return path


def patch_central(path: Path, name: str, **fields: int) -> None:
    """Overwrite fields (flags, compressed, uncompressed sizes) of member `name`'s central
    directory entry, which is what zip readers trust; the local header is left as it was."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        pos = zf.start_dir  # where the central directory begins (CPython's ZipFile)
    while data[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len].decode() == name:
            for field, value in fields.items():
                offset, fmt = _CENTRAL[field]
                struct.pack_into(fmt, data, pos + offset, value)
            path.write_bytes(bytes(data))
            return
        pos += 46 + name_len + extra_len + comment_len
    raise KeyError(name)
