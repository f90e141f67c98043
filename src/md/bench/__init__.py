"""md.bench: the benchmarks behind `md bench ...` and the scripts in bench/.

One module per benchmark, each a function returning a JSON-ready dict:

- `codecs.bench_codecs`: per codec preset, bytes/sample, ratio vs float32, cosine, max abs
  error and encode / decode MB/s on real teacher features;
- `latency.bench_latency`: batch-1 latency of teacher, MD student and visible-only student;
- `train_step.bench_train_step`: one student step offline / online / in memory, peak memory;
- `loader.bench_loader_vs_step`: loader samples/s per worker count vs the step's;
- `cache.bench_cache`: `md cache-teacher` samples/s vs the teacher's forward-only samples/s;
- `cache.bench_cache_dask`: `md cache-teacher` on 1, 2, ... Dask workers vs one process.

Scale-out measurements outside `md bench`: `bench/store_requests.py` (requests and bytes per
sample on an S3-compatible server) and `bench/ddp_step.py` (iterations/s, 1 vs N torchrun
processes).

`setup.ensure_setup` supplies a teacher, store and dataset: the user's, or a tiny synthetic
one built in a temporary folder (so every benchmark runs standalone).
"""
