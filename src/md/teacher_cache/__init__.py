"""md.teacher_cache: run the GAFF teacher once over a dataset and store its targets.

``run(CacheConfig(...))`` is `md cache-teacher`; `cache_shards` is the per-shard unit of
work; `cluster` runs it as one Dask task per shard (``scheduler=`` / ``workers=``, with
`cache_on_dask` and the task `cache_shard_task`); `targets` says what is stored per sample;
`fidelity` measures the codec presets on real teacher features (bench/codecs.py).
"""

from md.teacher_cache.cluster import ShardJob, cache_on_dask, cache_shard_task
from md.teacher_cache.run import CacheConfig, load_teacher, run
from md.teacher_cache.shards import ShardOptions, ShardStats, cache_shards, shard_batches
from md.teacher_cache.targets import BOX_FIELDS, low_thermal, student_thermal
from md.teacher_cache.writer import Shard, ShardWriter

__all__ = [
    "BOX_FIELDS",
    "CacheConfig",
    "Shard",
    "ShardJob",
    "ShardOptions",
    "ShardStats",
    "ShardWriter",
    "cache_on_dask",
    "cache_shard_task",
    "cache_shards",
    "load_teacher",
    "low_thermal",
    "run",
    "shard_batches",
    "student_thermal",
]
