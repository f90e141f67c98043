"""What the KAIST and MFNet readers share: the sample record, the dataset base class, list
files, image loading, `validate` and `dataset_fingerprint` (layout detection and
`open_dataset`, which need both readers, are in `md.data.opening`).

Layouts on disk (see docs/internals.md, "Images and samples"):

- KAIST: ``images/setXX/VYYY/{visible,lwir}/IZZZZZ.{png,jpg}`` and
  ``annotations/setXX/VYYY/IZZZZZ.txt`` (bbGt v3); task ``detection``.
- MFNet: ``images/NAME.png`` (4 channels: RGB + thermal) and ``labels/NAME.png`` (one
  channel, classes 0..8); task ``segmentation``.

Existence of every file is checked when the dataset is opened (cheap `stat` calls, so a
missing modality file fails before any training starts); sizes, decodability and annotation
contents are checked lazily when an item is loaded, and for every sample by `validate`
(KAIST annotations are parsed when the dataset opens).
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from md.errors import DataError

Item = dict[str, Any]


_HASH_CHUNK = 1 << 20  # bytes read per step when hashing: files are streamed, never slurped


@dataclass(frozen=True)
class Sample:
    """One visible/thermal pair on disk.

    For MFNet `visible_path` and `thermal_path` are the same 4-channel PNG. `target_path` is
    the bbGt annotation (KAIST) or the label PNG (MFNet).
    """

    id: str  # dataset-relative key: "set06/V001/I00459" or "00101D"
    group: str  # "day", "night" or "unknown" (see the layout modules)
    visible_path: Path
    thermal_path: Path
    target_path: Path

    def files(self) -> dict[str, Path]:
        """Role -> path, one entry per distinct file (MFNet's shared image is ``image``)."""
        roles: dict[str, Path] = (
            {"image": self.visible_path}
            if self.visible_path == self.thermal_path
            else {"visible": self.visible_path, "thermal": self.thermal_path}
        )
        roles["annotation" if self.target_path.suffix == ".txt" else "label"] = self.target_path
        return roles


class PairedDataset(Dataset[Item], ABC):
    """Map-style dataset of visible/thermal pairs; subclasses implement `load`.

    Items are dicts as in docs/internals.md. `samples` keeps the list-file order (the KAIST
    evaluator numbers images in that order), or sorted ids when every sample is used.
    """

    layout: ClassVar[str]
    task: ClassVar[str]
    decoded: DecodedImages | None = None  # decoded-once image cache (`use_decoded_cache`)

    def __init__(
        self, root: Path, samples: list[Sample], split: str | None, list_file: Path | None
    ) -> None:
        self.root = root
        self.samples = samples
        self.split = split  # "train", ... when opened by split name, else None
        self.list_file = list_file  # the list actually read, or None for "all samples"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        return self.load(self.samples[index])

    @abstractmethod
    def load(self, sample: Sample) -> Item:
        """Read one sample from disk; raises `DataError` naming the file at fault."""

    def use_decoded_cache(self, root: str | os.PathLike[str], fingerprint: str) -> None:
        """Read images through a decoded-once cache under `root` (`DecodedImages`) for the
        dataset whose `dataset_fingerprint` sha256 is `fingerprint`."""
        self.decoded = DecodedImages(Path(root), fingerprint, self.root)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, layout={self.layout!r}, "
            f"samples={len(self)}, list_file={self.list_file and str(self.list_file)!r})"
        )


def resolve_list(
    root: Path, split: str | None, list_file: str | Path | None, list_dirs: Sequence[str]
) -> Path | None:
    """The list file to read: `list_file`, or ``{dir}/{split}.txt`` for dir in `list_dirs`."""
    if list_file is not None:
        path = Path(list_file)
        if not path.is_file():
            raise DataError(f"{path}: list file not found; pass an existing image-set list")
        return path
    if split is None:
        return None
    candidates = [root / d / f"{split}.txt" for d in list_dirs]
    for path in candidates:
        if path.is_file():
            return path
    tried = " or ".join(str(p) for p in candidates)
    raise DataError(f"{tried}: split {split!r} not found; add that list or pick another split")


def read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, entry) for each non-blank line; ``#`` starts a comment line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read list file ({e}); re-save it as UTF-8 text") from e
    entries = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry in seen:
            raise DataError(
                f"{path} line {number}: {entry!r} repeats line {seen[entry]}; "
                "remove the duplicate (it would count twice in metrics)"
            )
        seen[entry] = number
        entries.append((number, entry))
    if not entries:
        raise DataError(f"{path}: list file has no entries; add one sample id per line")
    return entries


def first_existing(stem: Path, suffixes: Iterable[str]) -> Path | None:
    """``stem.with_suffix(s)`` for the first suffix that exists, else None."""
    for suffix in suffixes:
        path = stem.with_name(stem.name + suffix)
        if path.is_file():
            return path
    return None


# --- image loading ---------------------------------------------------------------------------


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image; `DataError` naming the file if it is missing or corrupt."""
    if not path.is_file():
        raise DataError(f"{path}: image file is missing; restore it or drop the sample")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file must fail here, not inside a worker
            return img.copy()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, zlib/struct errors)
        raise DataError(
            f"{path}: unreadable or corrupt image ({type(e).__name__}: {e}); "
            "re-copy or re-export the file"
        ) from e


def image_to_tensor(array: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """(H, W) or (H, W, C) integer array -> float32 (C, H, W) tensor in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    # np.array copies: torch.from_numpy on PIL's read-only buffer would warn.
    tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    return tensor.permute(2, 0, 1).contiguous().div_(scale)


SIXTEEN_BIT_MODES = frozenset(
    {"I;16", "I;16L", "I;16B", "I;16N", "I"}
)  # PIL modes of 16-bit thermal files


def decode_rgb(path: Path) -> np.ndarray:
    """A visible image's pixels, (H, W, 3) uint8 (gray or RGBA files converted)."""
    return np.asarray(read_image(path).convert("RGB"))


def decode_gray(path: Path) -> np.ndarray:
    """A thermal image's pixels, (H, W): uint8 after PIL's luminance conversion ("L"), or
    the integers of a 16-bit file as stored."""
    img = read_image(path)
    return np.asarray(img) if img.mode in SIXTEEN_BIT_MODES else np.asarray(img.convert("L"))


def load_rgb(path: Path, cache: DecodedImages | None = None) -> torch.Tensor:
    """A visible image as float32 (3, H, W) in [0, 1]; gray or RGBA files are converted.
    With `cache`, the decoded pixels come from (or go to) a `DecodedImages` cache."""
    pixels = cache.pixels(path, "rgb", decode_rgb) if cache is not None else decode_rgb(path)
    return image_to_tensor(pixels)


def load_gray(path: Path, cache: DecodedImages | None = None) -> torch.Tensor:
    """A thermal image as float32 (1, H, W) in [0, 1].

    KAIST stores lwir frames as 3-channel gray JPG/PNG whose channels differ by a few
    levels; they are reduced with PIL's luminance conversion ("L"). 16-bit files are
    scaled by 65535 instead of 255. `cache` as in `load_rgb`.
    """
    pixels = cache.pixels(path, "gray", decode_gray) if cache is not None else decode_gray(path)
    if pixels.dtype != np.uint8:
        return image_to_tensor(np.asarray(pixels, dtype=np.float32), scale=65535.0)
    return image_to_tensor(pixels)


class DecodedImages:
    """A decoded-once local cache of a dataset's images: each file's pixels as `decode_rgb`
    / `decode_gray` return them, one ``.npy`` per file and kind under
    ``root/<dataset sha256>/``, written on first read and read back (no PNG / JPEG decoding)
    afterwards.

    - Invalidation: the directory is named by the dataset's fingerprint (every file's
      sha256, `dataset_fingerprint`), so a changed, added or removed file means another
      directory; nothing in an old one is read.
    - Atomic writes: an entry is written to a temporary file in the same directory and
      renamed into place, so a reader (another worker, a later run) sees a whole entry or
      none; an entry that does not load (a damaged file) is decoded again and rewritten.
    """

    def __init__(self, root: Path, fingerprint: str, data_root: Path) -> None:
        self.dir = Path(root) / fingerprint
        self.data_root = Path(data_root).resolve()  # once, not per image read

    def entry(self, path: Path, kind: str) -> Path:
        """The cache file of an image file (named by its path within the dataset)."""
        try:
            rel = Path(path).resolve().relative_to(self.data_root).as_posix()
        except ValueError:
            rel = Path(path).resolve().as_posix()
        key = hashlib.sha256(f"{kind}:{rel}".encode()).hexdigest()[:40]
        return self.dir / f"{key}.npy"

    def pixels(self, path: Path, kind: str, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        """The decoded pixels of `path`: from the cache, else `decode(path)`, then cached."""
        file = self.entry(path, kind)
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            pass  # not cached yet (or a damaged entry): decode and (re)write it
        pixels = decode(path)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with tmp.open("wb") as f:
                np.save(f, np.ascontiguousarray(pixels), allow_pickle=False)
            os.replace(tmp, file)
        except OSError as e:
            raise DataError(
                f"{file}: cannot write the decoded-image cache ({e}); free space there or "
                "point image_cache at a writable directory"
            ) from None
        return pixels


def check_same_size(a: torch.Tensor, a_path: Path, b: torch.Tensor, b_path: Path) -> None:
    """`DataError` naming both files unless the two (C, H, W) images share H and W."""
    if a.shape[-2:] != b.shape[-2:]:
        (ha, wa), (hb, wb) = a.shape[-2:], b.shape[-2:]
        raise DataError(
            f"{b_path}: size {wb}x{hb} differs from {a_path} ({wa}x{ha}); "
            "re-export the pair at one resolution (registered visible/thermal pairs)"
        )


# --- whole-dataset checks --------------------------------------------------------------------


def validate(ds: PairedDataset, on_item: Callable[[Item], None] | None = None) -> list[DataError]:
    """Load every sample and return the problems found (an empty list means clean).

    Runs the same checks as item loading (decodable images, matching sizes, well-formed
    annotations / labels). `on_item` sees each good item, so a caller (``md data inspect``)
    can gather statistics in the same pass.
    """
    problems: list[DataError] = []
    for index in range(len(ds)):
        try:
            item = ds[index]
        except DataError as e:
            problems.append(e)
            continue
        if on_item is not None:
            on_item(item)
    return problems


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_fingerprint(ds: PairedDataset) -> dict[str, Any]:
    """Provenance of a dataset's contents, JSON-ready and independent of where it lives.

    Returns ``{"layout", "task", "num_samples", "ids" (sorted), "files": {id: {role: sha256}},
    "sha256"}``; roles come from `Sample.files` (KAIST ``visible``/``thermal``/``annotation``,
    MFNet ``image``/``label``). The combined ``sha256`` covers layout, ids, roles and file
    hashes, so renaming a list file or moving the folder does not change it.
    """
    by_id = {s.id: s for s in ds.samples}
    ids = sorted(by_id)
    files = {i: {role: sha256_file(p) for role, p in by_id[i].files().items()} for i in ids}
    combined = hashlib.sha256(f"md-dataset-v1\n{ds.layout}\n".encode())
    for i in ids:
        for role in sorted(files[i]):
            combined.update(f"{i}\t{role}\t{files[i][role]}\n".encode())
    return {
        "layout": ds.layout,
        "task": ds.task,
        "num_samples": len(ids),
        "ids": ids,
        "files": files,
        "sha256": combined.hexdigest(),
    }
