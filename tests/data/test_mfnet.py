"""MFNet layout reader on the real pairs in ../shared/data/mfnet-mini."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from md.data import collate, dataset_fingerprint, detect_layout, open_dataset
from md.data.mfnet import load_label, mfnet_group


def test_all_220_pairs_half_day_half_night(mfnet_mini: Path) -> None:
    ds = open_dataset(mfnet_mini)
    assert (ds.layout, ds.task) == ("mfnet", "segmentation")
    assert len(ds) == 220
    ids = [s.id for s in ds.samples]
    assert ids == sorted(ids)
    groups = [s.group for s in ds.samples]
    assert groups.count("day") == 110 and groups.count("night") == 110
    assert all(s.group == ("day" if s.id.endswith("D") else "night") for s in ds.samples)
    assert mfnet_group("01234X") == "unknown"


def test_splits_165_train_55_test(mfnet_mini: Path) -> None:
    train = open_dataset(mfnet_mini, split="train")
    test = open_dataset(mfnet_mini, split="test")
    assert (len(train), len(test)) == (165, 55)
    assert train.list_file == mfnet_mini / "train.txt" and train.split == "train"
    train_ids, test_ids = {s.id for s in train.samples}, {s.id for s in test.samples}
    assert not train_ids & test_ids
    assert train_ids | test_ids == {s.id for s in open_dataset(mfnet_mini).samples}
    listed = (mfnet_mini / "test.txt").read_text().split()
    assert [s.id for s in test.samples] == listed  # list order is kept


def test_items_are_640x480_with_labels(mfnet_mini: Path) -> None:
    ds = open_dataset(mfnet_mini, split="test")
    item = ds[0]
    assert item["visible"].shape == (3, 480, 640) and item["visible"].dtype == torch.float32
    assert item["thermal"].shape == (1, 480, 640) and item["thermal"].dtype == torch.float32
    assert item["labels"].shape == (480, 640) and item["labels"].dtype == torch.int64
    assert "boxes" not in item
    batch = collate([ds[0], ds[1]])
    assert batch["labels"].shape == (2, 480, 640) and batch["visible"].shape == (2, 3, 480, 640)


def test_every_label_within_classes_0_to_8(mfnet_mini: Path) -> None:
    ds = open_dataset(mfnet_mini)
    counts = np.zeros(256, dtype=np.int64)
    for sample in ds.samples:  # read with PIL directly: independent of md's own label check
        with Image.open(sample.target_path) as img:
            assert img.mode == "L" and img.size == (640, 480)
            counts += np.bincount(np.asarray(img).ravel(), minlength=256)
    assert counts[9:].sum() == 0 and (counts[:9] > 0).sum() > 3
    label = load_label(ds.samples[0].target_path, (480, 640))  # md's reader agrees
    assert int(label.max()) <= 8 and label.shape == (480, 640)


def test_pixels_match_pil(mfnet_mini: Path) -> None:
    ds = open_dataset(mfnet_mini)
    index = [s.id for s in ds.samples].index("00705N")
    item = ds[index]
    rgba = np.asarray(Image.open(mfnet_mini / "images" / "00705N.png"))
    label = np.asarray(Image.open(mfnet_mini / "labels" / "00705N.png"))
    for y, x in [(0, 0), (123, 456), (479, 639), (300, 20)]:
        assert (item["visible"][:, y, x] * 255).round().tolist() == rgba[y, x, :3].tolist()
        assert round(float(item["thermal"][0, y, x]) * 255) == rgba[y, x, 3]
        assert int(item["labels"][y, x]) == label[y, x]
    assert torch.equal(item["labels"], torch.from_numpy(label.astype(np.int64)))


def test_detects_mfnet_and_fingerprints_image_and_label(mfnet_copy: Path) -> None:
    assert detect_layout(mfnet_copy) == "mfnet"
    fp = dataset_fingerprint(open_dataset(mfnet_copy))
    assert fp["ids"] == ["00101D", "00705N"] and fp["task"] == "segmentation"
    assert set(fp["files"]["00101D"]) == {"image", "label"}
    assert len(fp["sha256"]) == 64
