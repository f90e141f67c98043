"""MFNet mean accuracy / mean IoU on hand-computed confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from md.errors import MdError
from md.eval import mfnet

# two 2x2 images: a day one and a night one (pixel counts below are by hand)
LABELS = {"00001D": [[0, 1], [1, 2]], "00002N": [[0, 0], [3, 3]]}
PREDS = {"00001D": [[0, 1], [2, 2]], "00002N": [[0, 1], [3, 0]]}


def write_pngs(folder: Path, maps: dict[str, list[list[int]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in maps.items():
        Image.fromarray(np.array(values, dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def test_confusion_matrix_rows_are_ground_truth() -> None:
    c = mfnet.confusion_matrix(np.array(LABELS["00001D"]), np.array(PREDS["00001D"]))
    expected = np.zeros((9, 9), np.int64)
    expected[0, 0] = expected[1, 1] = expected[1, 2] = expected[2, 2] = 1
    np.testing.assert_array_equal(c, expected)


def test_hand_computed_means_with_day_night_split() -> None:
    names = list(LABELS)
    report = mfnet.evaluate_arrays(
        names, [np.array(LABELS[n]) for n in names], [np.array(PREDS[n]) for n in names]
    )
    # day: acc 0:1/1 1:1/2 2:1/1; IoU 0:1/1 1:1/(2+1-1) 2:1/(1+2-1)
    # night: acc 0:1/2 3:1/2; IoU 0:1/(2+2-1) 3:1/(2+1-1); class 1 predicted, no GT: left out
    # all: acc 0:2/3 1:1/2 2:1/1 3:1/2; IoU 0:2/4 1:1/3 2:1/2 3:1/2
    expected_acc = {"all": (2 / 3 + 1 / 2 + 1 + 1 / 2) / 4, "day": 2.5 / 3, "night": 0.5}
    expected_iou = {"all": (1 / 2 + 1 / 3 + 1 / 2 + 1 / 2) / 4, "day": 2 / 3, "night": 5 / 12}
    for subset in mfnet.SUBSETS:
        assert report["mean_accuracy"][subset] == pytest.approx(100 * expected_acc[subset])
        assert report["mean_iou"][subset] == pytest.approx(100 * expected_iou[subset])
    night = report["per_class"]["night"]
    assert night["car"] == {"accuracy": None, "iou": None}
    assert night["bike"] == {"accuracy": pytest.approx(50.0), "iou": pytest.approx(50.0)}


def test_unlabeled_class_counts_in_the_mean() -> None:
    label = np.zeros((4, 4), np.uint8)
    label[:2] = 2
    pred = np.full((4, 4), 2, np.uint8)  # unlabeled pixels predicted as person
    report = mfnet.evaluate_arrays(["x"], [label], [pred])
    # unlabeled: acc 0, IoU 0; person: acc 1, IoU 8/16 -> means 50 and 25
    assert report["mean_accuracy"]["all"] == pytest.approx(50.0)
    assert report["mean_iou"]["all"] == pytest.approx(25.0)
    assert report["mean_iou"]["day"] is None  # no D / N suffix: only in "all"


@pytest.mark.parametrize("root_given", [True, False])
def test_evaluate_prediction_files(tmp_path: Path, root_given: bool) -> None:
    labels = write_pngs(tmp_path / "mfnet" / "labels", LABELS)
    preds = write_pngs(tmp_path / "preds", PREDS)
    (tmp_path / "list.txt").write_text("00001D\n00002N\n")
    labels_arg = tmp_path / "mfnet" if root_given else labels
    report = mfnet.evaluate_predictions(preds, labels_arg, tmp_path / "list.txt")
    assert report["mean_iou"]["night"] == pytest.approx(100 * 5 / 12)
    assert mfnet.evaluate_predictions(preds, labels_arg) == report  # default: every label


def test_missing_prediction(tmp_path: Path) -> None:
    labels = write_pngs(tmp_path / "labels", LABELS)
    preds = write_pngs(tmp_path / "preds", {"00001D": PREDS["00001D"]})
    with pytest.raises(MdError, match=r"00002N\.png: missing prediction file"):
        mfnet.evaluate_predictions(preds, labels)


def test_wrong_size_prediction_names_file_and_sizes(tmp_path: Path) -> None:
    labels = write_pngs(tmp_path / "labels", LABELS)
    preds = write_pngs(tmp_path / "preds", {**PREDS, "00002N": [[0, 1, 1]]})
    with pytest.raises(MdError) as info:
        mfnet.evaluate_predictions(preds, labels)
    message = str(info.value)
    assert str(preds / "00002N.png") in message
    assert "3x1" in message and "2x2" in message and "\n" not in message


@pytest.mark.parametrize("bad", [9, 255])
def test_values_outside_classes(tmp_path: Path, bad: int) -> None:
    labels = write_pngs(tmp_path / "labels", LABELS)
    preds = write_pngs(tmp_path / "preds", {**PREDS, "00001D": [[0, bad], [1, 1]]})
    with pytest.raises(MdError, match=rf"00001D\.png: prediction values \[{bad}\] outside"):
        mfnet.evaluate_predictions(preds, labels)


def test_colour_prediction_is_rejected(tmp_path: Path) -> None:
    labels = write_pngs(tmp_path / "labels", LABELS)
    preds = write_pngs(tmp_path / "preds", PREDS)
    Image.new("RGB", (2, 2)).save(preds / "00001D.png")
    with pytest.raises(MdError, match="single-channel"):
        mfnet.evaluate_predictions(preds, labels)
