"""Per-group evaluation (md.eval.groups): hand-computed cases and the published KAIST files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from md.cli.evaluate import evaluate
from md.eval import groups, kaist

KAIST_EVAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kaist-eval"
# recall 1 at every FPPI reference: LAMR = 100 * exp(log(1e-10)) (the floor of the protocol)
PERFECT = 100.0 * 1e-10


def _box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def _one_image(heights: list[float], occ: list[int] | None = None) -> kaist.Annotations:
    boxes = np.array([_box(50 + 150 * i, 20, 40, h) for i, h in enumerate(heights)])
    gt = kaist.ImageGroundTruth(boxes, occlusion=None if occ is None else np.array(occ))
    return kaist.annotations_from_arrays([gt], ["set06/V000/I00001"])


def _dets(boxes: list[list[float]], scores: list[float]) -> kaist.Detections:
    return kaist.detections_from_arrays(
        [kaist.ImageDetections(np.array(boxes).reshape(-1, 4), np.array(scores))]
    )


def test_disparity_hand_computed() -> None:
    d = groups.disparity({"a": 10.0, "b": 40.0, "c": None}, higher_is_better=False)
    assert d == {"worst": "b", "best": "a", "difference": 30.0, "ratio": 4.0}
    d = groups.disparity({"a": 10.0, "b": 40.0}, higher_is_better=True)
    assert d == {"worst": "a", "best": "b", "difference": 30.0, "ratio": 0.25}
    assert groups.disparity({"a": 0.0, "b": 5.0}, False)["ratio"] is None


def test_scale_bands_and_dont_care() -> None:
    ann = _one_image([150.0, 80.0, 30.0])  # near, medium, far at 512 rows
    near, medium, far = (_box(50 + 150 * i, 20, 40, h) for i, h in enumerate([150, 80, 30]))
    # a confident hit on the medium GT first: in the near and far bands that GT is don't
    # care, so the detection is dropped, not a false positive
    dets = _dets([medium, near, far], [0.95, 0.9, 0.8])
    rates = groups.kaist_groups(ann, dets, ["scale"])["scale"]["miss_rate"]
    assert rates["near"] == pytest.approx(PERFECT)
    assert rates["medium"] == pytest.approx(PERFECT)
    assert rates["far"] == pytest.approx(PERFECT)
    # without the medium detection, the medium band misses its only GT: 100 %
    rates = groups.kaist_groups(ann, _dets([near, far], [0.9, 0.8]), ["scale"])["scale"]
    assert rates["miss_rate"]["medium"] == 100.0
    assert rates["disparity"]["worst"] == "medium"


def test_scale_band_edges_scale_with_image_height() -> None:
    # at 256 rows the bands are halved: 57.5 px is the near edge (lo <= h), 22.5 the far one
    setting = kaist.ReasonableSetting(image_size=(320, 256))
    heights = [57.5, 57.0, 22.5, 22.0]
    b = [_box(20 + 70 * i, 20, 20, h) for i, h in enumerate(heights)]  # inside 320 px
    gt = kaist.ImageGroundTruth(np.array(b))
    ann = kaist.annotations_from_arrays([gt], ["set06/V000/I00001"])
    only_first = groups.kaist_groups(ann, _dets([b[0]], [0.9]), ["scale"], setting)["scale"]
    assert only_first["miss_rate"]["near"] == pytest.approx(PERFECT)
    assert only_first["miss_rate"]["medium"] == 100.0  # 57.0 and 22.5 are medium, both missed
    assert only_first["miss_rate"]["far"] == 100.0  # 22.0 is far


def test_occlusion_levels() -> None:
    ann = _one_image([100.0, 100.0, 100.0], occ=[0, 1, 2])
    b = [_box(50 + 150 * i, 20, 40, 100) for i in range(3)]
    out = groups.kaist_groups(ann, _dets(b[:2], [0.9, 0.8]), ["occlusion"])["occlusion"]
    assert out["miss_rate"]["none"] == pytest.approx(PERFECT)
    assert out["miss_rate"]["partial"] == pytest.approx(PERFECT)
    assert out["miss_rate"]["heavy"] == 100.0
    assert out["disparity"]["difference"] == pytest.approx(100.0 - PERFECT)


def test_box_field_and_unknown_field() -> None:
    ann = _one_image([100.0, 100.0])
    b = [_box(50 + 150 * i, 20, 40, 100) for i in range(2)]
    fields = {"appearance": np.array(["common", "rare"], dtype=object)}
    out = groups.kaist_groups(ann, _dets(b[:1], [0.9]), ["appearance"], box_fields=fields)
    assert out["appearance"]["miss_rate"] == {"common": pytest.approx(PERFECT), "rare": 100.0}
    with pytest.raises(Exception, match="appearance"):
        groups.kaist_groups(ann, _dets(b[:1], [0.9]), ["appearance"])


@pytest.fixture(scope="module")
def kaist_annotations() -> kaist.Annotations:
    if not (KAIST_EVAL / "KAIST_annotation.json").is_file():
        pytest.skip(f"real KAIST evaluation data not found at {KAIST_EVAL.resolve()}")
    return kaist.load_annotations(KAIST_EVAL / "KAIST_annotation.json")


@pytest.mark.parametrize(
    "name, day, night", [("MBNet_result.txt", 8.28, 7.86), ("MLPD_result.txt", 7.95, 6.95)]
)
def test_published_day_night_groups(
    kaist_annotations: kaist.Annotations, name: str, day: float, night: float
) -> None:
    dets = kaist.load_results(KAIST_EVAL / "results" / name, kaist_annotations)
    out = groups.kaist_groups(kaist_annotations, dets, ["day_night", "scale", "occlusion"])
    rates = out["day_night"]["miss_rate"]
    assert round(rates["day"], 2) == day and round(rates["night"], 2) == night
    assert out["day_night"]["disparity"]["difference"] == pytest.approx(abs(day - night), abs=0.01)
    scale = out["scale"]["miss_rate"]
    # every band holds GTs on the KAIST test set; small pedestrians are the hard ones
    assert all(v is not None and 0 < v < 100 for v in scale.values())
    assert scale["far"] > scale["medium"] > scale["near"]
    assert out["occlusion"]["miss_rate"]["heavy"] > out["occlusion"]["miss_rate"]["none"]


def test_kaist_results_cli_groups(kaist_annotations: kaist.Annotations) -> None:
    result = CliRunner().invoke(
        evaluate,
        [
            "kaist-results",
            str(KAIST_EVAL / "results" / "MBNet_result.txt"),
            "--annotations",
            str(KAIST_EVAL / "KAIST_annotation.json"),
            "--groups",
            "scale,occlusion",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["groups"]) == {"scale", "occlusion"}
    assert set(report["groups"]["scale"]["miss_rate"]) == {"near", "medium", "far"}
    assert not math.isnan(report["groups"]["scale"]["disparity"]["difference"])
