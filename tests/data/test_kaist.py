"""KAIST layout reader on the real demo frames (../shared/data/kaist-demo)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from md.data import collate, dataset_fingerprint, open_dataset, validate
from md.data.kaist import kaist_group, parse_bbgt

DEMO_IDS = [
    "set06/V001/I00459",
    "set08/V000/I02159",
    "set08/V001/I02579",
    "set08/V002/I01419",
    "set09/V000/I01139",
    "set09/V000/I01959",
    "set10/V001/I03279",
    "set11/V000/I00159",
    "set11/V000/I01279",
]


def raw_box_lines(root: Path) -> list[str]:
    """Box lines of every annotation file, read without md (the independent count)."""
    lines = []
    for path in sorted((root / "annotations").rglob("*.txt")):
        text = path.read_text().splitlines()
        lines += [ln for ln in text if ln.strip() and not ln.startswith("%")]
    return lines


def test_demo_list_gives_nine_pairs_in_list_order(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    assert (ds.layout, ds.task, ds.root) == ("kaist", "detection", kaist_demo)
    assert [s.id for s in ds.samples] == DEMO_IDS
    assert len(ds) == 9
    sample = ds.samples[0]
    assert sample.visible_path == kaist_demo / "images/set06/V001/visible/I00459.png"
    assert sample.thermal_path == kaist_demo / "images/set06/V001/lwir/I00459.png"
    assert sample.target_path == kaist_demo / "annotations/set06/V001/I00459.txt"


def test_without_list_every_frame_sorted(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo)
    assert [s.id for s in ds.samples] == sorted(DEMO_IDS)
    assert ds.list_file is None


def test_groups_follow_the_set_number(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    groups = {s.id: s.group for s in ds.samples}
    assert [i for i, g in groups.items() if g == "day"] == DEMO_IDS[:4]  # set06, set08
    assert [i for i, g in groups.items() if g == "night"] == DEMO_IDS[4:]  # set09-11
    expected = {
        0: "day",
        2: "day",
        3: "night",
        5: "night",
        6: "day",
        8: "day",
        9: "night",
        11: "night",
        12: "unknown",
    }
    for number, group in expected.items():
        assert kaist_group(f"set{number:02d}/V000/I00000") == group


def test_items_are_640x512_rgb_and_one_channel_thermal(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    for item in (ds[0], ds[8]):
        assert item["visible"].shape == (3, 512, 640)
        assert item["thermal"].shape == (1, 512, 640)
        assert item["visible"].dtype == item["thermal"].dtype == torch.float32
        assert float(item["visible"].min()) >= 0.0 and float(item["visible"].max()) <= 1.0
    # The lwir PNG is 3-channel gray; the reader reduces it with PIL's luminance ("L").
    lwir = Image.open(ds.samples[0].thermal_path)
    assert lwir.mode == "RGB"
    expected = np.asarray(lwir.convert("L"), dtype=np.float32) / 255.0
    assert torch.equal(ds[0]["thermal"][0], torch.from_numpy(expected))
    rgb = np.asarray(Image.open(ds.samples[0].visible_path))
    assert torch.equal(
        ds[0]["visible"][:, 100, 200] * 255, torch.tensor(rgb[100, 200], dtype=torch.float32)
    )


def test_59_boxes_in_total_counted_both_ways(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    items = [ds[i] for i in range(len(ds))]
    assert len(raw_box_lines(kaist_demo)) == 59
    assert sum(len(item["boxes"]) for item in items) == 59
    for item in items:
        n = len(item["boxes"])
        assert item["boxes"].shape == (n, 4) and item["boxes"].dtype == torch.float32
        assert item["box_ignore"].shape == (n,) and item["box_ignore"].dtype == torch.bool
        assert item["box_occlusion"].shape == (n,) and item["box_occlusion"].dtype == torch.int64
        assert len(item["box_classes"]) == n


def test_one_frame_read_by_hand(kaist_demo: Path) -> None:
    # annotations/set09/V000/I01139.txt: five persons, the last with ignore = 1:
    #   person 173 251 60 148 0 ... 0 | person 421 244 45 104 | person 306 233 21 51
    #   person 334 241 23 53          | person 391 241 30 30 0 0 0 0 0 1 0
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    item = ds[DEMO_IDS.index("set09/V000/I01139")]
    assert item["id"] == "set09/V000/I01139" and item["group"] == "night"
    expected = torch.tensor(
        [
            [173, 251, 233, 399],
            [421, 244, 466, 348],
            [306, 233, 327, 284],
            [334, 241, 357, 294],
            [391, 241, 421, 271],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(item["boxes"], expected)
    assert item["box_ignore"].tolist() == [False, False, False, False, True]
    assert item["box_occlusion"].tolist() == [0, 0, 0, 0, 0]
    assert item["box_classes"] == ["person"] * 5
    # set08/V002/I01419: the third box has occlusion level 1.
    assert ds[DEMO_IDS.index("set08/V002/I01419")]["box_occlusion"].tolist() == [0, 0, 1]


def test_non_person_classes_are_ignored_and_header_only_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "I00000.txt"
    path.write_text(
        "% bbGt version=3\n"
        "person 10 20 30 40 0 0 0 0 0 0 0\n"
        "people 10 20 30 40 1 0 0 0 0 0 0\n"
        "cyclist 10 20 30 40 2 0 0 0 0 0 0\n"
        "person? 10 20 30 40 0 0 0 0 0 0 0\n"
        "person 1.5 2.5 3 4 0 0 0 0 0 1\n"  # 11 fields: the angle is optional
    )
    boxes = parse_bbgt(path)
    assert boxes["box_classes"] == ["person", "people", "cyclist", "person?", "person"]
    assert boxes["box_ignore"].tolist() == [False, True, True, True, True]
    assert boxes["box_occlusion"].tolist() == [0, 1, 2, 0, 0]
    assert boxes["boxes"][4].tolist() == [1.5, 2.5, 4.5, 6.5]
    path.write_text("% bbGt version=3\n")
    empty = parse_bbgt(path)
    assert empty["boxes"].shape == (0, 4) and empty["box_ignore"].shape == (0,)


def test_split_name_reads_root_or_imagesets(kaist_copy: Path) -> None:
    (kaist_copy / "test.txt").write_text("set09/V000/I01139\n")
    (kaist_copy / "imageSets").mkdir()
    (kaist_copy / "imageSets" / "val.txt").write_text("set06_V001_I00459\n\n# comment\n")
    assert [s.id for s in open_dataset(kaist_copy, split="test").samples] == ["set09/V000/I01139"]
    assert [s.id for s in open_dataset(kaist_copy, split="val").samples] == ["set06/V001/I00459"]


def test_validate_demo_is_clean_and_sees_every_item(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    seen: list[str] = []
    assert validate(ds, on_item=lambda item: seen.append(item["id"])) == []
    assert seen == DEMO_IDS


def test_fingerprint_hashes_each_file_and_ignores_location(
    kaist_copy: Path, tmp_path: Path
) -> None:
    ds = open_dataset(kaist_copy)
    fp = dataset_fingerprint(ds)
    assert fp["layout"] == "kaist" and fp["num_samples"] == 2
    assert fp["ids"] == ["set06/V001/I00459", "set09/V000/I01139"]
    files = fp["files"]["set06/V001/I00459"]
    assert set(files) == {"visible", "thermal", "annotation"}
    lwir = kaist_copy / "images/set06/V001/lwir/I00459.png"
    assert files["thermal"] == hashlib.sha256(lwir.read_bytes()).hexdigest()
    moved = shutil.copytree(kaist_copy, tmp_path / "elsewhere")
    assert dataset_fingerprint(open_dataset(moved))["sha256"] == fp["sha256"]
    with (moved / "annotations/set09/V000/I01139.txt").open("a") as f:
        f.write("person 1 1 5 5 0 0 0 0 0 0 0\n")
    assert dataset_fingerprint(open_dataset(moved))["sha256"] != fp["sha256"]


def test_collate_stacks_images_and_lists_boxes(kaist_demo: Path) -> None:
    ds = open_dataset(kaist_demo, list_file=kaist_demo / "demo.txt")
    loader = DataLoader(ds, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["visible"].shape == (3, 3, 512, 640)
    assert batch["thermal"].shape == (3, 1, 512, 640)
    assert batch["id"] == DEMO_IDS[:3] and batch["group"] == ["day"] * 3
    assert [len(b) for b in batch["boxes"]] == [8, 2, 19]
    assert [len(b) for b in batch["box_ignore"]] == [8, 2, 19]
    assert isinstance(batch["box_classes"][0], list)


@pytest.mark.parametrize("entry", ["set06/V001/I00459.png", "set06_V001_I00459"])
def test_list_entry_spellings(kaist_copy: Path, entry: str) -> None:
    (kaist_copy / "one.txt").write_text(entry + "\r\n")
    ds = open_dataset(kaist_copy, list_file=kaist_copy / "one.txt")
    assert [s.id for s in ds.samples] == ["set06/V001/I00459"]
