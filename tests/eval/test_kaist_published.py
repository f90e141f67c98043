"""Published KAIST miss rates reproduced to 0.01 (reasonable setting, percent).

Result files and annotations are public material in ../shared/data/kaist-eval (see its
README): MBNet / MLPD / MSDS-RCNN from the MLPD repository, GAFF from zhanghengdev/GAFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from md.eval import kaist

KAIST_EVAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kaist-eval"

# file -> (all, day, night) as published
PUBLISHED = {
    "MBNet_result.txt": (8.13, 8.28, 7.86),
    "MLPD_result.txt": (7.58, 7.95, 6.95),
    "MSDS-RCNN_result.txt": (11.34, 10.53, 12.94),
    "GAFF_det-test-all.txt": (6.48, 8.35, 3.46),
}


@pytest.fixture(scope="module")
def kaist_eval() -> Path:
    if not (KAIST_EVAL / "KAIST_annotation.json").is_file():
        pytest.skip(f"real KAIST evaluation data not found at {KAIST_EVAL.resolve()}")
    return KAIST_EVAL


@pytest.fixture(scope="module")
def kaist_annotations(kaist_eval: Path) -> kaist.Annotations:
    return kaist.load_annotations(kaist_eval / "KAIST_annotation.json")


def test_annotation_subsets(kaist_annotations: kaist.Annotations) -> None:
    assert kaist_annotations.n_images == 2252
    assert kaist_annotations.subset_images("day").size == 1455
    assert kaist_annotations.subset_images("night").size == 797
    np.testing.assert_array_equal(kaist_annotations.subset_images("night"), np.arange(1455, 2252))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_miss_rates(
    kaist_eval: Path, kaist_annotations: kaist.Annotations, name: str
) -> None:
    detections = kaist.load_results(kaist_eval / "results" / name, kaist_annotations)
    rates = kaist.miss_rates(kaist_annotations, detections)
    got = tuple(round(rates[s], 2) for s in kaist.SUBSETS)
    assert got == pytest.approx(PUBLISHED[name], abs=1e-9), rates


@pytest.mark.parametrize(("subset", "expected"), [("day", 8.35), ("night", 3.46)])
def test_gaff_files_numbered_within_subset(
    kaist_eval: Path, kaist_annotations: kaist.Annotations, subset: kaist.Subset, expected: float
) -> None:
    within = kaist.load_results(
        kaist_eval / "results" / f"GAFF_det-test-{subset}.txt", kaist_annotations, numbering=subset
    )
    rate = kaist.evaluate_kaist(kaist_annotations, within, subset)
    assert round(rate, 2) == pytest.approx(expected, abs=1e-9)
    whole = kaist.load_results(kaist_eval / "results" / "GAFF_det-test-all.txt", kaist_annotations)
    assert rate == kaist.evaluate_kaist(kaist_annotations, whole, subset)


def test_in_memory_arrays_and_writer_match_the_file_path(
    kaist_eval: Path, kaist_annotations: kaist.Annotations, tmp_path: Path
) -> None:
    detections = kaist.load_results(kaist_eval / "results" / "MBNet_result.txt", kaist_annotations)
    per_image = _split_detections(detections, kaist_annotations.n_images)
    truth = _split_ground_truth(kaist_annotations)
    assert kaist.evaluate_detections(per_image, truth) == pytest.approx(8.1295, abs=1e-4)

    written = tmp_path / "roundtrip.txt"
    kaist.write_results(written, per_image)
    again = kaist.load_results(written, kaist_annotations)
    assert kaist.miss_rates(kaist_annotations, again) == pytest.approx(
        kaist.miss_rates(kaist_annotations, detections), abs=1e-9
    )


def _split_detections(d: kaist.Detections, n: int) -> list[kaist.ImageDetections]:
    xyxy = np.concatenate([d.boxes[:, :2], d.boxes[:, :2] + d.boxes[:, 2:]], axis=1)
    return [kaist.ImageDetections(xyxy[d.image == i], d.scores[d.image == i]) for i in range(n)]


def _split_ground_truth(a: kaist.Annotations) -> list[kaist.ImageGroundTruth]:
    xyxy = np.concatenate([a.boxes[:, :2], a.boxes[:, :2] + a.boxes[:, 2:]], axis=1)
    out = []
    for i in range(a.n_images):
        sel = a.image == i
        out.append(
            kaist.ImageGroundTruth(xyxy[sel], a.ignore[sel], a.occlusion[sel], a.height[sel])
        )
    return out
