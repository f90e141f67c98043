"""KAIST protocol rules on tiny hand-made cases (miss rates computed by hand)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from md.errors import MdError
from md.eval import kaist

PERFECT = 100 * 1e-10  # every reference at recall 1: miss rate floored at 1e-10
PERSON = [100.0, 100.0, 130.0, 200.0]  # xyxy, 30 x 100 px, well inside the border band


def gt(*boxes: list[float], **fields: list[float]) -> kaist.ImageGroundTruth:
    arrays = {k: np.array(v) for k, v in fields.items()}
    return kaist.ImageGroundTruth(np.array(boxes, dtype=float).reshape(-1, 4), **arrays)


def dt(*scored: tuple[list[float], float]) -> kaist.ImageDetections:
    boxes = np.array([b for b, _ in scored], dtype=float).reshape(-1, 4)
    return kaist.ImageDetections(boxes, np.array([s for _, s in scored], dtype=float))


def lamr(misses: Sequence[float]) -> float:
    """Hand formula: 100 * exp(mean(log(max(1e-10, miss)))) over the 9 references."""
    assert len(misses) == 9
    return 100 * math.exp(sum(math.log(max(1e-10, m)) for m in misses) / 9)


def test_single_gt_single_match_is_floored_at_1e_10() -> None:
    rate = kaist.evaluate_detections([dt((PERSON, 0.9))], [gt(PERSON)])
    assert rate == pytest.approx(PERFECT)


def test_no_detections_misses_everything() -> None:
    assert kaist.evaluate_detections([dt()], [gt(PERSON)]) == 100.0


def test_no_regular_ground_truth_is_nan() -> None:
    assert math.isnan(kaist.evaluate_detections([dt((PERSON, 0.9))], [gt()]))


def test_reference_without_any_fppi_below_it_gets_recall_zero() -> None:
    # one image: the false positive comes first, so the curve starts at FPPI 1
    far = [400.0, 100.0, 430.0, 200.0]
    rate = kaist.evaluate_detections([dt((far, 0.9), (PERSON, 0.8))], [gt(PERSON)])
    assert rate == pytest.approx(lamr([1] * 8 + [0]))  # only the reference 1.0 sees recall 1
    # a second, empty image halves the FPPI to 0.5: references 0.5623 and 1.0 see recall 1
    rate = kaist.evaluate_detections([dt((far, 0.9), (PERSON, 0.8)), dt()], [gt(PERSON), gt()])
    assert rate == pytest.approx(lamr([1] * 7 + [0, 0]))


def test_recall_at_the_last_point_with_largest_fppi_below_reference() -> None:
    # 50 images (FPPI step 0.02): TP (fppi 0, recall .5), FP (.02, .5), TP (.02, 1)
    second = [300.0, 100.0, 330.0, 200.0]
    far = [500.0, 100.0, 530.0, 200.0]
    dets = [dt((PERSON, 0.9), (far, 0.8)), dt((second, 0.7))] + [dt()] * 48
    truth = [gt(PERSON), gt(second)] + [gt()] * 48
    # references 0.01, 0.0178 take FPPI 0 (recall .5); 0.0316 onwards FPPI .02, recall 1
    assert kaist.evaluate_detections(dets, truth) == pytest.approx(lamr([0.5] * 2 + [0] * 7))


def test_fppi_counts_images_of_the_subset() -> None:
    # 3 day images (set06) and 5 night images (set09); one FP in day image 0
    names = [f"set06/V000/I{i:05d}" for i in range(3)] + [f"set09/V000/I{i:05d}" for i in range(5)]
    far = [400.0, 100.0, 430.0, 200.0]
    truth = [gt(PERSON), gt(), gt(), gt(PERSON)] + [gt()] * 4
    dets = [dt((far, 0.9), (PERSON, 0.8)), dt(), dt(), dt((PERSON, 0.5))] + [dt()] * 4
    annotations = kaist.annotations_from_arrays(truth, names)
    rates = kaist.miss_rates(annotations, kaist.detections_from_arrays(dets))
    assert rates["day"] == pytest.approx(lamr([1] * 7 + [0] * 2))  # FPPI 1/3: 0.5623 and 1
    assert rates["night"] == pytest.approx(PERFECT)
    assert rates["all"] == pytest.approx(lamr([1] * 5 + [0] * 4))  # FPPI 1/8: from 0.1778 on


def test_equal_scores_keep_image_order() -> None:
    # tie between an FP (image 0) and a TP (image 1): the FP counts first (stable sort)
    far = [400.0, 100.0, 430.0, 200.0]
    rate = kaist.evaluate_detections([dt((far, 0.5)), dt((PERSON, 0.5))], [gt(), gt(PERSON)])
    assert rate == pytest.approx(lamr([1] * 7 + [0, 0]))


def test_ignored_gt_absorbs_many_detections_by_area_of_detection() -> None:
    region = [300.0, 100.0, 500.0, 400.0]  # flagged ignore, e.g. a crowd
    inside = [
        ([310.0, 110.0, 340.0, 180.0], 0.95),
        ([350.0, 120.0, 380.0, 190.0], 0.94),
        ([400.0, 150.0, 430.0, 220.0], 0.93),
    ]
    truth = gt(region, PERSON, ignore=[True, False])
    detections = [dt(*inside, (PERSON, 0.5))]
    matches = kaist.match_detections(
        kaist.annotations_from_arrays([truth]), kaist.detections_from_arrays(detections)
    )
    np.testing.assert_array_equal(matches.label, [-1, -1, -1, 1])  # IoU tiny, IoA = 1
    assert kaist.evaluate_detections(detections, [truth]) == pytest.approx(PERFECT)
    # the same region as a regular GT: three false positives (FPPI >= 1) ahead of the TP
    assert kaist.evaluate_detections(detections, [gt(region, PERSON)]) == 100.0


def test_ignored_region_needs_half_of_the_detection_inside() -> None:
    region = [300.0, 100.0, 500.0, 400.0]
    truth = kaist.annotations_from_arrays([gt(region, ignore=[True])])
    half = dt(([280.0, 150.0, 320.0, 250.0], 0.9))  # 20 of 40 px wide inside: IoA 0.5
    less = dt(([279.0, 150.0, 320.0, 250.0], 0.9))  # 20 of 41 px: IoA 0.49
    labels = kaist.match_detections(truth, kaist.detections_from_arrays([half])).label
    assert labels.tolist() == [-1]
    labels = kaist.match_detections(truth, kaist.detections_from_arrays([less])).label
    assert labels.tolist() == [0]


def test_regular_gts_are_matched_before_ignored_ones() -> None:
    region = [90.0, 90.0, 140.0, 210.0]  # ignored, listed first, contains the person
    truth = kaist.annotations_from_arrays([gt(region, PERSON, ignore=[True, False])])
    dets = kaist.detections_from_arrays([dt((PERSON, 0.9), (PERSON, 0.8))])
    # the first takes the person; the second has no free regular GT and is absorbed
    np.testing.assert_array_equal(kaist.match_detections(truth, dets).label, [1, -1])


def test_one_detection_per_gt_and_best_free_iou() -> None:
    a, b = [100.0, 100.0, 130.0, 200.0], [110.0, 100.0, 140.0, 200.0]  # IoU(a, b) = 0.5
    truth = kaist.annotations_from_arrays([gt(a, b)])
    dets = kaist.detections_from_arrays([dt((a, 0.9), (a, 0.8), (a, 0.7))])
    # 1st takes a (IoU 1), 2nd takes b (IoU 0.5 >= 0.5), 3rd is a false positive
    np.testing.assert_array_equal(kaist.match_detections(truth, dets).label, [1, 1, 0])


@pytest.mark.parametrize(
    ("xywh", "ignored"),
    [
        ((5.0, 100.0, 30.0, 60.0), False),
        ((4.9, 100.0, 30.0, 60.0), True),
        ((100.0, 5.0, 30.0, 60.0), False),
        ((100.0, 4.0, 30.0, 60.0), True),
        ((605.0, 100.0, 30.0, 60.0), False),  # x + w = 635
        ((605.5, 100.0, 30.0, 60.0), True),
        ((100.0, 447.0, 30.0, 60.0), False),  # y + h = 507
        ((100.0, 447.5, 30.0, 60.0), True),
    ],
)
def test_border_band(xywh: tuple[float, float, float, float], ignored: bool) -> None:
    x, y, w, h = xywh
    annotations = kaist.annotations_from_arrays([gt([x, y, x + w, y + h])])
    assert kaist.ignored_ground_truth(annotations).tolist() == [ignored]


def test_height_occlusion_and_flag_filters() -> None:
    boxes = [[100.0, 100.0, 130.0, 100.0 + h] for h in (55.0, 54.9, 60.0, 60.0, 60.0, 60.0)]
    truth = gt(
        *boxes,
        height=[55.0, 54.9, 50.0, 60.0, 60.0, 60.0],
        occlusion=[0, 0, 0, 1, 2, 0],
        ignore=[0, 0, 0, 0, 0, 1],
    )
    ignored = kaist.ignored_ground_truth(kaist.annotations_from_arrays([truth]))
    # the `height` field decides, not the box (third: 60 px box annotated 50 px)
    assert ignored.tolist() == [False, True, True, False, True, True]


def test_setting_scales_with_image_size() -> None:
    assert kaist.KAIST_REASONABLE.height_threshold == 55.0
    assert kaist.KAIST_REASONABLE.border_box == (5.0, 5.0, 635.0, 507.0)
    large = kaist.ReasonableSetting(image_size=(1280, 1024))
    assert large.height_threshold == 110.0
    assert large.border_box == (10.0, 10.0, 1270.0, 1014.0)
    # a 100 px person counts at 640x512 but is "small" at 2x resolution, where 110 px is the bar
    truth = [gt([400.0, 400.0, 430.0, 500.0])]
    assert kaist.evaluate_detections([dt(([400.0, 400.0, 430.0, 500.0], 1.0))], truth) == (
        pytest.approx(PERFECT)
    )
    assert math.isnan(kaist.evaluate_detections([dt()], truth, large))


@pytest.mark.parametrize(("n_false", "kept"), [(999, True), (1000, False)])
def test_at_most_1000_detections_per_image_by_score(n_false: int, kept: bool) -> None:
    # the TP comes first in the input but has the lowest score: the cap keeps the top scores
    xs = np.arange(n_false, dtype=float) % 10 * 40 + 150
    false = np.stack([xs, np.full(n_false, 300.0), xs + 30, np.full(n_false, 400.0)], axis=1)
    dets = kaist.ImageDetections(
        np.vstack([[PERSON], false]), np.r_[0.1, np.linspace(0.99, 0.5, n_false)]
    )
    annotations = kaist.annotations_from_arrays([gt(PERSON)])
    matches = kaist.match_detections(annotations, kaist.detections_from_arrays([dets]))
    assert len(matches.label) == min(n_false + 1, 1000)
    assert (matches.label == 1).any() == kept
    assert matches.positives.tolist() == [1]


# --------------------------------------------------------------------------- files and errors


def _annotations() -> kaist.Annotations:
    names = ["set06/V000/I00001", "set07/V000/I00001", "set10/V000/I00001"]
    return kaist.annotations_from_arrays([gt(PERSON), gt(), gt(PERSON)], names)


def test_load_results_numbering(tmp_path: Path) -> None:
    path = tmp_path / "night.txt"
    path.write_text("1,100,100,30,100,0.9\n\n1 120 100 30 100 0.5\n")
    detections = kaist.load_results(path, _annotations(), numbering="night")
    np.testing.assert_array_equal(detections.image, [2, 2])  # night image 1 = overall 3
    np.testing.assert_allclose(detections.boxes[0], [100, 100, 30, 100])


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("1,100,100,30,0.9", "expected 6 numbers"),
        ("1,100,abc,30,100,0.9", "expected 6 numbers"),
        ("1,100,100,30,100,nan", "expected 6 numbers"),
        ("0,100,100,30,100,0.9", "not one of 1..3"),
        ("4,100,100,30,100,0.9", "not one of 1..3"),
        ("1.5,100,100,30,100,0.9", "not one of 1..3"),
        ("1,100,100,-30,100,0.9", "negative box"),
    ],
)
def test_bad_results_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "res.txt"
    path.write_text(f"1,100,100,30,100,0.9\n{line}\n")
    with pytest.raises(MdError) as info:
        kaist.load_results(path, _annotations())
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and fragment in message
    assert "\n" not in message


def test_bad_annotation_files(tmp_path: Path) -> None:
    with pytest.raises(MdError, match="annotation file not found"):
        kaist.load_annotations(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [{"id": 0}]}')
    with pytest.raises(MdError, match="not a KAIST annotation JSON"):
        kaist.load_annotations(broken)


def test_subset_without_images_is_an_error() -> None:
    annotations = kaist.annotations_from_arrays([gt(PERSON)], ["frame_0001"])
    with pytest.raises(MdError, match="no day images"):
        annotations.subset_images("day")
