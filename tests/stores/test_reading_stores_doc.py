"""docs/reading-stores.md: its zarr + numpy example, run where md cannot be imported, decodes
exactly what `TargetStore.read` returns (lossless and compact)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from contract import build_local, tiny_schema

from md.stores import open_store
from tests.conftest import REPO

DOC = REPO / "docs" / "reading-stores.md"

# Run after the example: save what it decoded; fail if any md module got loaded.
_HARNESS = """
import json, sys
loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] == "md"]
assert not loaded, f"md was imported: {loaded}"
out = {}
for level in levels:
    out["features/" + level] = features(level, indices)
    out["attention/" + level] = attention(level, indices)
np.savez(OUT, indices=indices, **out)
with open(OUT + ".ids.json", "w") as fh:
    json.dump([str(s) for s in ids], fh)
"""


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = blocks[0]
    assert 'STORE = "run.zarr"' in code and "import md" not in code
    return code


@pytest.mark.parametrize("codec", ["lossless", "compact"])
def test_doc_example_matches_target_store_read(codec: str, tmp_path: Path) -> None:
    store = build_local(tmp_path / "run.zarr", tiny_schema(codec, full=True), shards=[0, 2])
    out = str(tmp_path / "decoded.npz")
    code = _example().replace('STORE = "run.zarr"', f"STORE = {store!r}\nOUT = {out!r}")
    # md is installed in this environment: make it unimportable, as on a machine without it
    script = "import sys\nsys.modules['md'] = None\n" + code + _HARNESS
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    got = np.load(out)
    with open_store(store) as ts:
        want_idx = np.flatnonzero(ts.written_mask())
        np.testing.assert_array_equal(got["indices"], want_idx)  # shard 1 was never written
        want = ts.read(want_idx)
        levels = [lv.name for lv in ts.schema.levels]
    for level in levels:
        for name in (f"features/{level}", f"attention/{level}"):
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ids = json.loads(Path(out + ".ids.json").read_text())
    assert ids == want["sample_id"].tolist()
