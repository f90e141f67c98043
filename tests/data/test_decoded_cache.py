"""The decoded-once image cache (`DecodedImages`): same items as decoding, reads come from
it, a changed dataset gets another directory, damaged entries are rewritten."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from md.data import dataset_fingerprint, open_dataset


def _items_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
        assert same, k


def _cached(root, cache):
    ds = open_dataset(root, split="train")
    ds.use_decoded_cache(cache, dataset_fingerprint(ds)["sha256"])
    return ds


@pytest.mark.parametrize("layout", ["kaist", "mfnet"])
def test_cached_items_equal_decoded_ones_and_come_from_the_cache(layout, request, tmp_path):
    root = request.getfixturevalue("synth_det" if layout == "kaist" else "synth_seg")
    plain, cached = open_dataset(root, split="train"), _cached(root, tmp_path / "c")
    for i in range(3):
        _items_equal(plain[i], cached[i])  # written
        _items_equal(plain[i], cached[i])  # read back
    assert cached.decoded is not None
    entry = cached.decoded.entry(
        cached.samples[0].visible_path, "rgb" if layout == "kaist" else "rgbt"
    )
    pixels = np.load(entry)
    np.save(entry, 255 - pixels)  # the cache is what is read: a changed entry shows
    assert not torch.equal(cached[0]["visible"], plain[0]["visible"])
    entry.write_bytes(b"damaged")  # a damaged entry is decoded again and rewritten
    _items_equal(plain[0], cached[0])
    assert np.array_equal(np.load(entry), pixels)


def test_a_changed_dataset_uses_another_cache_directory(synth_det, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(synth_det, copy)
    cache = tmp_path / "c"
    first = _cached(copy, cache)
    _ = first[0]
    path = first.samples[0].visible_path
    img = np.asarray(Image.open(path).convert("RGB")).copy()
    img[0, 0] = 255 - img[0, 0]
    Image.fromarray(img).save(path)
    second = _cached(copy, cache)
    assert second.decoded is not None and first.decoded is not None
    assert second.decoded.dir != first.decoded.dir
    _items_equal(second[0], open_dataset(copy, split="train")[0])
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [first.decoded.dir.name, second.decoded.dir.name]
    )
