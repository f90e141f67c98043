"""The store schema: which arrays a teacher-target store holds, their shapes and layout.

A `StoreSchema` is a frozen description saved as JSON in the store's group attributes; a
store is reopened from it, and a resumed writer must present the same schema.

Two vocabularies:

- *target names*: what writers hand to `TargetStore.write_shard` and readers get back from
  `TargetStore.read` (float32 ``features/L``, float ``attention/L``, extras verbatim);
- *stored arrays* (`ArraySpec`): what lies in Zarr (``features/L`` as float16 or uint8,
  ``feature_scale/L``, ``attention/L`` as uint8, ``sample_id``, ``group``, ``written``).

Layout invariant: along the sample axis every stored array is cut at multiples of
``shard_size`` (a shard of per-sample chunks, or one chunk of ``shard_size`` samples), so a
writer that owns shard k owns every storage object holding samples of shard k.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from md.errors import StoreError
from md.stores.codecs import get_preset

# 2: every shard carries a ``shard_record`` (the run identity it was written with and a
# crc32c per stored object; md.stores.target_store). Version-1 stores stay readable.
SCHEMA_VERSION = 2
RECORD_VERSION = 2  # the first schema version with ``shard_record``

Role = Literal["features", "scale", "attention", "extra", "meta"]

# Names become Zarr paths: keep them to identifiers (a level named "c" is still fine).
_LEVEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_EXTRA_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)?$")
_EXTRA_DTYPES = ("bool", "uint8", "int16", "int32", "int64", "float16", "float32")
_TASKS = ("detection", "segmentation")

# -- array names: spelled here only ---------------------------------------------------------
FEATURES = "features"  # features/<level>: float32 targets, stored as float16 or uint8 codes
ATTENTION = "attention"  # attention/<level>: masks in [0, 1], stored as uint8
FEATURE_SCALE = "feature_scale"  # feature_scale/<level>: a quantized level's scale codes
FLIP = "_flip"  # features_flip/<level>, ...: the horizontally flipped view
INPUT_VISIBLE = "inputs/visible"  # bundled student inputs (`input_extras`)
INPUT_THERMAL = "inputs/thermal"
LABELS = "labels"  # bundled segmentation labels (`segmentation_extras`)
BOXES = "boxes"  # bundled padded box rows and their count (`detection_extras`)
NUM_BOXES = "num_boxes"
SAMPLE_ID = "sample_id"
GROUP = "group"
SHARD_RECORD = "shard_record"
WRITTEN = "written"
META_NAMES = (SAMPLE_ID, GROUP)  # per-sample strings readers may ask for beside the targets

# Names the store itself uses; extras may not shadow them.
_RESERVED_TOPS = (
    FEATURES,
    FEATURES + FLIP,
    FEATURE_SCALE,
    FEATURE_SCALE + FLIP,
    ATTENTION,
    ATTENTION + FLIP,
    SAMPLE_ID,
    GROUP,
    SHARD_RECORD,
    WRITTEN,
)


def features_name(level: str, flip: bool = False) -> str:
    """The array of level `level`'s features: ``features/C3`` (``features_flip/C3``)."""
    return f"{FEATURES}{FLIP if flip else ''}/{level}"


def attention_name(level: str, flip: bool = False) -> str:
    """The array of level `level`'s attention mask: ``attention/C3`` (``attention_flip/C3``)."""
    return f"{ATTENTION}{FLIP if flip else ''}/{level}"


def scale_array_name(name: str) -> str:
    """The side array of a quantized features array: features_flip/C3 -> feature_scale_flip/C3."""
    return name.replace(FEATURES, FEATURE_SCALE, 1)


def is_features_name(name: str) -> bool:
    """Whether `name` is a features array (either view) of some level."""
    return name.partition("/")[0] in (FEATURES, FEATURES + FLIP)


def is_attention_name(name: str) -> bool:
    """Whether `name` is an attention array (either view) of some level."""
    return name.partition("/")[0] in (ATTENTION, ATTENTION + FLIP)


@dataclass(frozen=True)
class LevelSpec:
    """One fused backbone level: teacher features [channels, height, width] at `stride`."""

    name: str  # e.g. "C3"; the Zarr paths are features/<name>, attention/<name>
    channels: int
    height: int  # feature-map rows (image height / stride for the store's image size)
    width: int
    stride: int  # input pixels per feature cell

    def __post_init__(self) -> None:
        if not _LEVEL_RE.match(self.name):
            raise StoreError(f"level name {self.name!r} must be an identifier such as 'C3'")
        for key in ("channels", "height", "width", "stride"):
            if int(getattr(self, key)) < 1:
                raise StoreError(f"level {self.name}: {key} must be >= 1")


@dataclass(frozen=True)
class ExtraSpec:
    """An optional per-sample array stored verbatim: `shape` excludes the sample axis."""

    name: str  # e.g. "inputs/visible", "labels", "boxes", "num_boxes"
    shape: tuple[int, ...]
    dtype: str  # one of _EXTRA_DTYPES
    compressed: bool = True  # False: chunks are the raw bytes + crc32c (no zstd)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not _EXTRA_RE.match(self.name) or self.name.split("/")[0] in _RESERVED_TOPS:
            raise StoreError(f"extra array name {self.name!r} is not allowed; use e.g. 'labels'")
        if self.dtype not in _EXTRA_DTYPES:
            raise StoreError(
                f"extra array {self.name}: dtype {self.dtype!r} not in {_EXTRA_DTYPES}"
            )
        if any(s < 1 for s in self.shape):
            raise StoreError(f"extra array {self.name}: shape {self.shape} must be positive")


@dataclass(frozen=True)
class ArraySpec:
    """One stored Zarr array: shape is (n,) + sample_shape."""

    name: str  # Zarr path inside the group
    sample_shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or "str" for variable-length UTF-8
    role: Role
    sharded: bool  # per-sample chunks grouped in shards; else one chunk per shard
    dimension_names: tuple[str | None, ...]
    compressed: bool = True  # the preset's compressors; False: crc32c only

    def chunks(self, shard_size: int) -> tuple[int, ...]:
        """One sample per chunk when sharded, else one chunk per shard."""
        return ((1 if self.sharded else shard_size), *self.sample_shape)

    def shards(self, shard_size: int) -> tuple[int, ...] | None:
        return (shard_size, *self.sample_shape) if self.sharded else None


@dataclass(frozen=True)
class StoreSchema:
    """What one teacher run stores: N samples cut into shards of `shard_size` samples."""

    n: int  # number of samples
    shard_size: int  # samples per shard; the unit of writing, resuming and reading
    levels: tuple[LevelSpec, ...]
    codec: str = "lossless"  # preset name in md.stores.codecs.PRESETS
    task: str = "detection"  # or "segmentation"
    flips: bool = False  # also store features_flip/L, attention_flip/L (horizontal flip)
    extras: tuple[ExtraSpec, ...] = field(default=())
    version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "extras", tuple(self.extras))
        if self.n < 1 or self.shard_size < 1:
            raise StoreError(
                f"schema needs n >= 1 and shard_size >= 1 (got {self.n}, {self.shard_size})"
            )
        if not self.levels:
            raise StoreError("schema needs at least one level")
        if self.task not in _TASKS:
            raise StoreError(f"schema task {self.task!r} must be one of {_TASKS}")
        names = [lv.name for lv in self.levels] + [e.name for e in self.extras]
        if len(set(names)) != len(names):
            raise StoreError(f"schema has duplicate level/extra names: {names}")
        get_preset(self.codec)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_range(self, k: int) -> range:
        """Sample indices of shard k (the last shard may be shorter)."""
        if not 0 <= k < self.num_shards:
            raise StoreError(f"shard {k} out of range: the store has {self.num_shards} shards")
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.n))

    def shard_of(self, index: int) -> int:
        return index // self.shard_size

    def level(self, name: str) -> LevelSpec:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise StoreError(f"no level {name!r}; levels are {[lv.name for lv in self.levels]}")

    def target_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every array a writer must supply to `write_shard`."""
        out: dict[str, tuple[int, ...]] = {}
        for flip in self._views():
            for lv in self.levels:
                out[features_name(lv.name, flip)] = (lv.channels, lv.height, lv.width)
                out[attention_name(lv.name, flip)] = (1, lv.height, lv.width)
        for e in self.extras:
            out[e.name] = e.shape
        return out

    def stored_arrays(self) -> list[ArraySpec]:
        """Every Zarr array of the store, in creation order (`written` last)."""
        preset = get_preset(self.codec)
        specs: list[ArraySpec] = []
        for flip in self._views():
            for lv in self.levels:
                shape = (lv.channels, lv.height, lv.width)
                # Dimension names unique per level (sizes differ between levels), shared by
                # the views and by a level's features, scales and attention (same sizes):
                # xarray refuses one name with two lengths in a group or its tree.
                chw = ("sample", f"channel_{lv.name}", f"y_{lv.name}", f"x_{lv.name}")
                mask_dims = ("sample", "attention_channel", f"y_{lv.name}", f"x_{lv.name}")
                specs.append(
                    ArraySpec(
                        features_name(lv.name, flip),
                        shape,
                        preset.feature_dtype,
                        "features",
                        True,
                        chw,
                    )
                )
                if preset.quantized:
                    specs.append(
                        ArraySpec(
                            scale_array_name(features_name(lv.name, flip)),
                            (lv.channels,),
                            "uint8",  # log-grid scale codes (md.stores.codecs.encode_scale)
                            "scale",
                            False,
                            ("sample", f"channel_{lv.name}"),
                        )
                    )
                specs.append(
                    ArraySpec(
                        attention_name(lv.name, flip),
                        (1, lv.height, lv.width),
                        "uint8",
                        "attention",
                        True,
                        mask_dims,
                    )
                )
        for e in self.extras:
            dims = ("sample", *extra_dimension_names(e))
            specs.append(
                ArraySpec(e.name, e.shape, e.dtype, "extra", len(e.shape) >= 2, dims, e.compressed)
            )
        meta = [(SAMPLE_ID, "str"), (GROUP, "str"), (WRITTEN, "bool")]
        if self.version >= RECORD_VERSION:  # written per shard, before `written`
            meta.insert(2, (SHARD_RECORD, "str"))
        for name, dtype in meta:
            specs.append(ArraySpec(name, (), dtype, "meta", False, ("sample",)))
        return specs

    def _views(self) -> tuple[bool, ...]:
        """The views stored, as `features_name`'s ``flip``: the plain one, then the flipped."""
        return (False, True) if self.flips else (False,)

    def array_spec(self, name: str) -> ArraySpec | None:
        """The spec of stored array `name`, or None if the schema has no such array."""
        return next((spec for spec in self.stored_arrays() if spec.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "n": self.n,
            "shard_size": self.shard_size,
            "task": self.task,
            "codec": self.codec,
            "flips": self.flips,
            "levels": [vars(lv).copy() for lv in self.levels],
            "extras": [
                {"name": e.name, "shape": list(e.shape), "dtype": e.dtype}
                | ({} if e.compressed else {"compressed": False})  # absent: as before
                for e in self.extras
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoreSchema:
        try:
            return cls(
                n=int(d["n"]),
                shard_size=int(d["shard_size"]),
                levels=tuple(LevelSpec(**lv) for lv in d["levels"]),
                codec=str(d["codec"]),
                task=str(d["task"]),
                flips=bool(d.get("flips", False)),
                extras=tuple(
                    ExtraSpec(
                        e["name"], tuple(e["shape"]), e["dtype"], bool(e.get("compressed", True))
                    )
                    for e in d.get("extras", ())
                ),
                version=int(d["version"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(
                f"store schema attribute is malformed ({e!r}); rebuild the store"
            ) from e


def extra_dimension_names(e: ExtraSpec) -> tuple[str, ...]:
    """Names of an extra's per-sample axes, unique to it (its sizes are its own):
    inputs/visible -> visible_channel, visible_y, visible_x; labels -> labels_y, labels_x;
    boxes -> box, box_field; anything else -> <leaf>_dim0, <leaf>_dim1, ..."""
    leaf = e.name.rsplit("/", 1)[-1]
    if e.name == BOXES and len(e.shape) == 2:
        return ("box", "box_field")
    if len(e.shape) == 3:
        return (f"{leaf}_channel", f"{leaf}_y", f"{leaf}_x")
    if len(e.shape) == 2 and e.name == LABELS:
        return (f"{leaf}_y", f"{leaf}_x")
    return tuple(f"{leaf}_dim{i}" for i in range(len(e.shape)))


def input_extras(
    visible_hw: tuple[int, int], thermal_hw: tuple[int, int], *, compressed: bool = True
) -> tuple[ExtraSpec, ...]:
    """Bundled student inputs: visible [3, H, W] and low-resolution thermal [1, h, w], uint8.
    ``compressed=False`` stores them as raw bytes + crc32c: camera images compress only
    ~1.3x, and zstd on them bounds a GPU host's loader (docs/benchmarks.md, issue 15)."""
    return (
        ExtraSpec(INPUT_VISIBLE, (3, *visible_hw), "uint8", compressed),
        ExtraSpec(INPUT_THERMAL, (1, *thermal_hw), "uint8", compressed),
    )


def segmentation_extras(hw: tuple[int, int]) -> tuple[ExtraSpec, ...]:
    """Per-pixel class labels [H, W] uint8."""
    return (ExtraSpec(LABELS, hw, "uint8"),)


def detection_extras(max_boxes: int) -> tuple[ExtraSpec, ...]:
    """Padded boxes [max_boxes, 6] float32 (layout chosen by the writer) + `num_boxes` int32."""
    return (ExtraSpec(BOXES, (max_boxes, 6), "float32"), ExtraSpec(NUM_BOXES, (), "int32"))
