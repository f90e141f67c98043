"""Delta stores and training on base + delta: `md cache-teacher --ids` keeps the base's
schema and points at it; `StoreUnion` reads each row from the right store; train-student
takes several --store and --init."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from md.errors import ConfigError
from md.stores import open_store
from md.student_train.union import StoreUnion
from md.teacher_cache.delta import attrs_sha256
from tests.conftest import one_torch_thread, run_cli


@pytest.fixture(scope="module")
def delta_store(full_store: Path, det_teacher: Path, synth_det: Path, tmp_path_factory) -> Path:
    """The 2 test frames of synth_det of highest drift contribution, cached as a delta."""
    root = tmp_path_factory.mktemp("delta")
    req = root / "req.json"
    run_cli("drift", "--store", str(full_store), "--data", str(synth_det), "--split", "test",
            "--select", "2", "--request", str(req))  # fmt: skip
    delta = root / "delta.zarr"
    with one_torch_thread():
        run_cli("cache-teacher", "--teacher", str(det_teacher), "--data", str(synth_det),
                "--store", str(delta), "--ids", str(req), "--flip-views", "--bundle-inputs",
                "--thermal-factor", "16", "progress=false")  # fmt: skip
    return delta


def test_delta_has_base_schema_and_lineage(full_store: Path, delta_store: Path) -> None:
    base, delta = open_store(full_store), open_store(delta_store)
    a, b = base.schema.to_json(), delta.schema.to_json()
    assert delta.n == 2 and {k: v for k, v in a.items() if k != "n"} == {
        k: v for k, v in b.items() if k != "n"
    }
    lin = delta.attrs["lineage"]
    assert lin["kind"] == "delta" and lin["base_attrs_sha256"] == attrs_sha256(base)
    assert lin["base_store"] == base.url


def test_union_rows_come_from_their_store(full_store: Path, delta_store: Path) -> None:
    base, delta = open_store(full_store), open_store(delta_store)
    u = StoreUnion(base, [delta], delta_repeat=2)
    ss = base.shard_size
    pad = -(-base.n // ss) * ss
    dpad = -(-delta.n // ss) * ss
    assert u.n == pad + 2 * dpad
    mask = u.written_mask()
    assert dpad > delta.n  # the delta's shard is short: rows after it are padding
    assert mask.sum() == base.n + 2 * delta.n and not mask[pad + delta.n : pad + dpad].any()
    rows = [pad + dpad + 1, 0, pad, base.n - 1, 0]
    got = u.read(rows, ["features/c3", "sample_id"])
    want_ids = [delta.read([1])["sample_id"][0], base.read([0])["sample_id"][0],
                delta.read([0])["sample_id"][0], base.read([base.n - 1])["sample_id"][0],
                base.read([0])["sample_id"][0]]  # fmt: skip
    assert list(got["sample_id"]) == want_ids
    assert np.array_equal(got["features/c3"][0], delta.read([1])["features/c3"][0])
    with pytest.raises(IndexError):
        u.read([pad + delta.n], ["sample_id"])  # padding between the stores


def test_union_refuses_another_schema(full_store: Path, plain_store: Path) -> None:
    with pytest.raises(ConfigError, match="differs from the base store"):
        StoreUnion(open_store(full_store), [open_store(plain_store)])


def test_train_student_on_base_and_delta_from_init(
    full_store: Path, delta_store: Path, tmp_path: Path
) -> None:
    common = ("--preset", "cpu-tiny", "batch_size=2", "iterations=1", "progress=false")
    with one_torch_thread():
        run_cli("train-student", "--store", str(full_store), "--out", str(tmp_path / "a.pt"),
                *common)  # fmt: skip
        out = json.loads(run_cli("train-student", "--store", str(full_store), "--store",
                                 str(delta_store), "--init", str(tmp_path / "a.pt"), "--out",
                                 str(tmp_path / "b.pt"), "--json", "lr=1e-12", *common))  # fmt: skip
    lin = out["lineage"]
    assert lin["init"] == str(tmp_path / "a.pt")
    assert lin["delta_stores"][0]["url"] == open_store(delta_store).url
    a = torch.load(tmp_path / "a.pt", weights_only=False)["weights"]
    b = torch.load(tmp_path / "b.pt", weights_only=False)["weights"]
    # One step at a tiny rate (the warm-up starts near 1e-6 whatever lr is): the conv
    # weights stay within ~1e-6 x gradient of the init's, while a fresh init differs by
    # O(0.1) (He-initialised 3x3 convs); 1e-4 separates the two by orders of magnitude.
    convs = [k for k in a if k.endswith("conv1.weight")]
    assert convs and all(torch.allclose(a[k], b[k], atol=1e-4) for k in convs)
