"""Stores as an interchange format: plain zarr, dask and xarray open every array, and the
attributes say how to decode the values without md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from md.stores import open_store

xr = pytest.importorskip("xarray", reason="xarray is a dev extra: pip install -e '.[dev]'")
da = pytest.importorskip("dask.array")

# xarray applies attention's scale_factor (1/255, a float64) in float64; md divides in
# float32. The two differ by float32's rounding of a value in [0, 1]: half an ulp of 1.
_ATTENTION_ATOL = 2.0**-24 + 1e-12


def _zarr_tree(path: Path) -> tuple[set[str], dict[str, zarr.Array]]:
    """Every group path ('' for the root) and every array (by path) of the store, as zarr
    itself lists them: the tree the checks below must cover, whatever groups exist."""
    root = zarr.open_group(path, mode="r")
    groups, arrays = {""}, {}
    for name, member in root.members(max_depth=None):
        if isinstance(member, zarr.Group):
            groups.add(name)
        else:
            arrays[name] = member
    return groups, arrays


@pytest.mark.parametrize("store_name", ["local_store", "compact_store"])
def test_datatree_opens_every_group_and_array(
    store_name: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(store_name)
    groups, arrays = _zarr_tree(path)
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert {node.path.strip("/") for node in tree.subtree} == groups
    in_tree = {
        f"{node.path.strip('/')}/{var}".strip("/")
        for node in tree.subtree
        for var in node.ds.data_vars
    }
    assert in_tree == set(arrays)
    for group in groups:  # and each group on its own
        ds = xr.open_zarr(path, group=group or None, consolidated=False)
        assert set(ds.data_vars) == {
            p.rsplit("/", 1)[-1] for p in arrays if p.rpartition("/")[0] == group
        }

    with open_store(path) as ts:
        idx = list(range(ts.n))
        want = ts.read(idx)
        codec = ts.preset
    for level in ("C3", "C4"):
        att = tree[f"attention/{level}"].values  # CF-decoded by xarray: scale_factor applied
        np.testing.assert_allclose(att, want[f"attention/{level}"], rtol=0, atol=_ATTENTION_ATOL)
        feats = tree[f"features/{level}"]
        assert feats.attrs["level"] == level and feats.attrs["stride"] in (8, 16)
        if not codec.quantized:
            np.testing.assert_array_equal(
                feats.values.astype(np.float32), want[f"features/{level}"]
            )
    assert tree["sample_id"].values.tolist() == want["sample_id"].tolist()


def test_dask_from_zarr_reads_every_array(compact_store: Path) -> None:
    _, arrays = _zarr_tree(compact_store)
    assert len(arrays) > 10
    for name, arr in arrays.items():
        lazy = da.from_zarr(str(compact_store), component=name)
        assert lazy.shape == arr.shape
        got = lazy.compute()
        assert (
            got.dtype == arr.dtype or arr.dtype.kind in "OTU" or str(arr.dtype) == "StringDType()"
        ), name
        np.testing.assert_array_equal(np.asarray(got, dtype=arr[:].dtype), arr[:], err_msg=name)


def test_cf_attributes_decode_compact_without_md(compact_store: Path) -> None:
    root = zarr.open_group(compact_store, mode="r")
    with open_store(compact_store) as ts:
        want = ts.read(list(range(ts.n)), ["features/C3", "attention/C3"])
    att = root["attention/C3"]
    assert att.attrs["scale_factor"] == pytest.approx(1 / 255) and att.attrs["add_offset"] == 0
    assert att.attrs["units"] == "1" and "level C3" in att.attrs["long_name"]
    q = root["features/C3"]
    a = q.attrs
    assert a["md_codec"] == "compact" and "t**2" in a["md_decode"] and a["steps"] == 15
    k = root[a["scale_array"]][:].astype(np.float64)
    t = (q[:].astype(np.float32) - a["steps"]) / a["steps"]
    scale = np.where(k > 0, np.exp2((k - a["scale_offset"]) / a["scale_per_octave"]), 0.0)
    value = np.sign(t) * t * t * scale.astype(np.float32)[..., None, None]
    np.testing.assert_array_equal(value, want["features/C3"])
    dims = q.metadata.dimension_names
    assert dims == ("sample", "channel_C3", "y_C3", "x_C3")


def test_old_layout_without_level_dims_still_reads(local_store: Path) -> None:
    """Stores written before dims were per level (every level: channel/y/x, no attributes)."""
    with open_store(local_store) as ts:
        want = ts.read(list(range(ts.n)))
    for meta in local_store.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") != "array":
            continue
        dims = doc["dimension_names"]
        doc["dimension_names"] = [
            d.split("_")[0] if d and d.split("_")[0] in ("channel", "y", "x") else d for d in dims
        ]
        doc["attributes"] = {}
        meta.write_text(json.dumps(doc))
    assert json.loads((local_store / "features/C3/zarr.json").read_text())["dimension_names"] == [
        "sample", "channel", "y", "x"
    ]  # fmt: skip
    with open_store(local_store) as ts:
        got = ts.read(list(range(ts.n)))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_datatree_opens_a_store_with_its_fingerprint_array(tmp_path: Path) -> None:
    from contract import build_local, tiny_schema
    from test_fingerprint import _attrs, _fingerprint

    from md.stores.fingerprint import FILES_ARRAY

    path = Path(
        build_local(tmp_path / "fp.zarr", tiny_schema(full=True), attrs=_attrs(_fingerprint(40)))
    )
    groups, arrays = _zarr_tree(path)
    assert FILES_ARRAY in arrays
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert {node.path.strip("/") for node in tree.subtree} == groups
    files = tree[FILES_ARRAY]
    assert files.dims == ("dataset_file",) and files.size == 120
    assert len(da.from_zarr(str(path), component=FILES_ARRAY).compute()) == 120
