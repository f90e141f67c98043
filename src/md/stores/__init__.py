"""Teacher-target stores: compressed, sharded, checksummed Zarr v3 with provenance.

The seam every backend (directory, packed zip, fsspec URLs such as ``s3://bucket/run.zarr``)
sits behind::

    schema = StoreSchema(n=1000, shard_size=16, levels=(LevelSpec("C3", 128, 64, 80, 8),))
    store = open_or_create_store("run.zarr", schema, {"teacher": {...}, "dataset": {...}})
    for k in store.missing_shards():          # resuming skips written shards
        store.write_shard(k, arrays, sample_ids, groups)   # one writer per shard
    batch = open_store("run.zarr").read([3, 4, 5])         # float32 features, float masks
    report = verify("run.zip"); print(info("run.zip")["bytes_per_sample"])

Layout, invariants and failure semantics: see `md.stores.target_store` and docs/internals.md ("Stores").
"""

from md.errors import IncompleteStoreError, StoreError
from md.stores.backends import StoreAccessError
from md.stores.codecs import PRESETS, CodecPreset, get_preset
from md.stores.create import create_store, open_or_create_store
from md.stores.fidelity import Fidelity, measure_fidelity
from md.stores.info import info
from md.stores.pack import check_manifest, pack, unpack
from md.stores.schema import (
    SCHEMA_VERSION,
    ArraySpec,
    ExtraSpec,
    LevelSpec,
    StoreSchema,
    detection_extras,
    input_extras,
    segmentation_extras,
)
from md.stores.sync import SyncResult, sync_store
from md.stores.target_store import TargetStore, open_store
from md.stores.verify import VerifyReport, verify

__all__ = [
    "PRESETS",
    "SCHEMA_VERSION",
    "ArraySpec",
    "CodecPreset",
    "ExtraSpec",
    "Fidelity",
    "IncompleteStoreError",
    "LevelSpec",
    "StoreAccessError",
    "StoreError",
    "StoreSchema",
    "SyncResult",
    "TargetStore",
    "VerifyReport",
    "check_manifest",
    "create_store",
    "detection_extras",
    "get_preset",
    "info",
    "input_extras",
    "measure_fidelity",
    "open_or_create_store",
    "open_store",
    "pack",
    "segmentation_extras",
    "sync_store",
    "unpack",
    "verify",
]
