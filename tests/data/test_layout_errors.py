"""Broken datasets give one-line `DataError`s that name the file at fault."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from md.data import detect_layout, open_dataset, validate
from md.errors import ConfigError, DataError

LWIR = "images/set06/V001/lwir/I00459.png"
VISIBLE = "images/set06/V001/visible/I00459.png"
ANNOTATION = "annotations/set06/V001/I00459.txt"


def error_of(fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The message of the `DataError` that fn(*args) raises; asserts it is one line."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_detects_both_real_layouts(kaist_demo: Path, mfnet_mini: Path) -> None:
    assert detect_layout(kaist_demo) == "kaist"
    assert detect_layout(mfnet_mini) == "mfnet"


def test_folder_in_neither_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("hi")
    message = error_of(open_dataset, tmp_path)
    assert str(tmp_path) in message and "KAIST" in message and "MFNet" in message
    assert "images/setXX" in message and "labels/NAME.png" in message
    assert str(tmp_path / "nope") in error_of(open_dataset, tmp_path / "nope")
    assert "no images/" in error_of(open_dataset, tmp_path / "images")


def test_kaist_without_annotations_folder(kaist_copy: Path) -> None:
    for path in sorted((kaist_copy / "annotations").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (kaist_copy / "annotations").rmdir()
    assert "no annotations/" in error_of(open_dataset, kaist_copy)


def test_missing_lwir_file(kaist_copy: Path) -> None:
    (kaist_copy / LWIR).unlink()
    message = error_of(open_dataset, kaist_copy)
    assert message.startswith(str(kaist_copy / LWIR)) and "missing lwir" in message


def test_missing_visible_file_of_a_listed_sample(kaist_copy: Path) -> None:
    (kaist_copy / VISIBLE).unlink()
    (kaist_copy / "test.txt").write_text("set06/V001/I00459\n")
    assert str(kaist_copy / VISIBLE) in error_of(open_dataset, kaist_copy, split="test")
    # Without a list the lwir-only frame is still found, and reported.
    assert "missing visible" in error_of(open_dataset, kaist_copy)


def test_missing_annotation_file(kaist_copy: Path) -> None:
    (kaist_copy / ANNOTATION).unlink()
    message = error_of(open_dataset, kaist_copy)
    assert str(kaist_copy / ANNOTATION) in message and "% bbGt version=3" in message


def test_mismatched_sizes_fail_at_load_and_in_validate(kaist_copy: Path) -> None:
    Image.open(kaist_copy / LWIR).resize((320, 256)).save(kaist_copy / LWIR)
    ds = open_dataset(kaist_copy)  # sizes are checked lazily
    message = error_of(ds.__getitem__, 0)
    assert str(kaist_copy / LWIR) in message and str(kaist_copy / VISIBLE) in message
    assert "320x256" in message and "640x512" in message
    problems = validate(ds)
    assert len(problems) == 1 and str(kaist_copy / LWIR) in str(problems[0])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_png(kaist_copy: Path, damage: str) -> None:
    data = (kaist_copy / LWIR).read_bytes()
    broken = data[: len(data) // 2] if damage == "truncate" else b"\x89PNG\r\n\x1a\n" + b"x" * 500
    (kaist_copy / LWIR).write_bytes(broken)
    message = error_of(open_dataset(kaist_copy).__getitem__, 0)
    assert message.startswith(str(kaist_copy / LWIR)) and "corrupt" in message


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("person 1 2 3\n", "4 fields"),
        ("person 1 2 x 4 0 0 0 0 0 0 0\n", "bad number"),
        ("person 1 2 0 4 0 0 0 0 0 0 0\n", "positive"),
    ],
)
def test_bad_bbgt_line(kaist_copy: Path, line: str, why: str) -> None:
    with (kaist_copy / ANNOTATION).open("a") as f:
        f.write(line)
    # Issue 12: a bad line surfaced only when training reached the sample; open checks it.
    message = error_of(open_dataset, kaist_copy)
    assert message.startswith(f"{kaist_copy / ANNOTATION} line 10") and why in message


def test_list_entry_not_found_or_malformed_or_repeated(kaist_copy: Path) -> None:
    listing = kaist_copy / "mine.txt"
    listing.write_text("set06/V001/I00459\nset06/V001/I99999\n")
    message = error_of(open_dataset, kaist_copy, list_file=listing)
    assert message.startswith(f"{listing} line 2") and "I99999" in message
    listing.write_text("set06/V001/I00459\nframe 7\n")
    assert f"{listing} line 2" in error_of(open_dataset, kaist_copy, list_file=listing)
    listing.write_text("set06/V001/I00459\nset06/V001/I00459\n")
    assert "repeats line 1" in error_of(open_dataset, kaist_copy, list_file=listing)
    assert str(kaist_copy / "gone.txt") in error_of(
        open_dataset, kaist_copy, list_file=kaist_copy / "gone.txt"
    )


def test_unknown_split_and_conflicting_arguments(kaist_copy: Path) -> None:
    message = error_of(open_dataset, kaist_copy, split="val")
    assert str(kaist_copy / "val.txt") in message and "imageSets" in message
    with pytest.raises(ConfigError):
        open_dataset(kaist_copy, split="val", list_file=kaist_copy / "x.txt")


def test_mfnet_label_wrong_size(mfnet_copy: Path) -> None:
    label = mfnet_copy / "labels" / "00101D.png"
    Image.open(label).resize((320, 240), Image.Resampling.NEAREST).save(label)
    message = error_of(open_dataset(mfnet_copy).__getitem__, 0)
    assert message.startswith(str(label)) and "320x240" in message


def test_mfnet_label_value_above_8(mfnet_copy: Path) -> None:
    label = mfnet_copy / "labels" / "00705N.png"
    array = np.array(Image.open(label))
    array[10, 10] = 9
    Image.fromarray(array).save(label)
    ds = open_dataset(mfnet_copy)
    message = error_of(ds.__getitem__, 1)
    assert message.startswith(str(label)) and "value 9" in message
    assert [str(label) in str(p) for p in validate(ds)] == [True]


def test_mfnet_image_not_four_channels(mfnet_copy: Path) -> None:
    image = mfnet_copy / "images" / "00101D.png"
    Image.open(image).convert("RGB").save(image)
    message = error_of(open_dataset(mfnet_copy).__getitem__, 0)
    assert message.startswith(str(image)) and "4-channel" in message


def test_mfnet_missing_label_and_corrupt_image(mfnet_copy: Path) -> None:
    image = mfnet_copy / "images" / "00101D.png"
    image.write_bytes(image.read_bytes()[:1000])
    assert error_of(open_dataset(mfnet_copy).__getitem__, 0).startswith(str(image))
    label = mfnet_copy / "labels" / "00705N.png"
    label.unlink()
    assert error_of(open_dataset, mfnet_copy).startswith(str(label))


def test_mfnet_list_entry_not_found(mfnet_copy: Path) -> None:
    (mfnet_copy / "train.txt").write_text("00101D\n00999D\n")
    message = error_of(open_dataset, mfnet_copy, split="train")
    assert message.startswith(f"{mfnet_copy / 'train.txt'} line 2") and "00999D" in message
