"""`md evaluate kaist-results / mfnet-predictions` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from md.cli.evaluate import evaluate

KAIST_EVAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kaist-eval"


@pytest.fixture()
def tiny_kaist(tmp_path: Path) -> Path:
    """Annotations of one day (set06) and one night (set09) image, one pedestrian each."""
    names = ["set06/V000/I00019", "set09/V000/I00019"]
    data = {
        "images": [
            {"id": i, "im_name": n, "width": 640, "height": 512} for i, n in enumerate(names)
        ],
        "annotations": [
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [100, 100, 30, 100],
                "height": 100,
                "occlusion": 0,
                "ignore": 0,
            }
            for i in range(2)
        ],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(evaluate, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_kaist_results_json_keys(tiny_kaist: Path, tmp_path: Path) -> None:
    results = tmp_path / "res.txt"
    results.write_text("1,100,100,30,100,0.9\n2,400,100,30,100,0.8\n")
    code, out, _ = run("kaist-results", results, "--annotations", tiny_kaist, "--json")
    assert code == 0
    rates = json.loads(out)["miss_rate"]
    assert set(rates) == {"all", "day", "night"}
    assert rates["day"] == pytest.approx(1e-8) and rates["night"] == 100.0


def test_kaist_results_subset_numbers_within(tiny_kaist: Path, tmp_path: Path) -> None:
    results = tmp_path / "night.txt"
    results.write_text("1,100,100,30,100,0.9\n")  # night image 1 = set09/V000/I00019
    code, out, _ = run(
        "kaist-results", results, "--annotations", tiny_kaist, "--subset", "night", "--json"
    )
    assert code == 0
    assert json.loads(out) == {"miss_rate": {"night": pytest.approx(1e-8)}}


def test_kaist_results_table(tiny_kaist: Path, tmp_path: Path) -> None:
    results = tmp_path / "res.txt"
    results.write_text("1,100,100,30,100,0.9\n")
    code, out, _ = run("kaist-results", results, "--annotations", tiny_kaist)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["all", "day", "night"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("1,100,100,30,100", "expected 6 numbers"), ("3,100,100,30,100,0.5", "not one of 1..2")],
)
def test_kaist_results_bad_line_exit_2(
    tiny_kaist: Path, tmp_path: Path, line: str, fragment: str
) -> None:
    results = tmp_path / "res.txt"
    results.write_text(f"1,100,100,30,100,0.9\n{line}\n")
    code, _, err = run("kaist-results", results, "--annotations", tiny_kaist)
    assert code == 2
    assert err.startswith(f"md: error: {results}:2: ") and fragment in err
    assert len(err.strip().splitlines()) == 1


def test_kaist_results_empty_file_is_refused_unless_allowed(
    tiny_kaist: Path, tmp_path: Path
) -> None:
    # Issue 12: an empty file scored a 100 % miss rate with exit 0, indistinguishable from
    # a detector that found nobody. It is refused; --allow-empty scores it on purpose.
    results = tmp_path / "res.txt"
    results.write_text("\n  \n")
    code, _, err = run("kaist-results", results, "--annotations", tiny_kaist)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"md: error: {results}: results file holds no detections")
    assert "--allow-empty" in err
    code, out, _ = run(
        "kaist-results", results, "--annotations", tiny_kaist, "--allow-empty", "--json"
    )
    assert code == 0 and json.loads(out)["miss_rate"]["all"] == 100.0


def test_kaist_results_published_file() -> None:
    if not (KAIST_EVAL / "KAIST_annotation.json").is_file():
        pytest.skip(f"real KAIST evaluation data not found at {KAIST_EVAL.resolve()}")
    code, out, _ = run(
        "kaist-results",
        KAIST_EVAL / "results" / "GAFF_det-test-day.txt",
        "--annotations",
        KAIST_EVAL / "KAIST_annotation.json",
        "--subset",
        "day",
        "--json",
    )
    assert code == 0
    assert round(json.loads(out)["miss_rate"]["day"], 2) == pytest.approx(8.35)


def write_png(path: Path, values: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.array(values, dtype=np.uint8)).save(path)


def test_mfnet_predictions_json_and_table(tmp_path: Path) -> None:
    write_png(tmp_path / "mfnet" / "labels" / "00001D.png", [[0, 1], [1, 2]])
    write_png(tmp_path / "mfnet" / "labels" / "00002N.png", [[0, 0], [3, 3]])
    write_png(tmp_path / "pred" / "00001D.png", [[0, 1], [2, 2]])
    write_png(tmp_path / "pred" / "00002N.png", [[0, 1], [3, 0]])
    (tmp_path / "list.txt").write_text("00001D\n00002N\n")
    code, out, _ = run(
        "mfnet-predictions",
        tmp_path / "pred",
        "--labels",
        tmp_path / "mfnet",
        "--list",
        tmp_path / "list.txt",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"mean_accuracy", "mean_iou", "per_class"}
    assert set(report["mean_iou"]) == {"all", "day", "night"}
    assert report["mean_iou"]["night"] == pytest.approx(100 * 5 / 12)
    code, out, _ = run(
        "mfnet-predictions", tmp_path / "pred", "--labels", tmp_path / "mfnet" / "labels"
    )
    assert code == 0
    assert out.splitlines()[-1].split()[0] == "mean" and "41.67" in out.splitlines()[-1]


def test_mfnet_wrong_size_exit_2(tmp_path: Path) -> None:
    write_png(tmp_path / "labels" / "00001D.png", [[0, 1], [1, 2]])
    write_png(tmp_path / "pred" / "00001D.png", [[0, 1, 1]])
    code, _, err = run("mfnet-predictions", tmp_path / "pred", "--labels", tmp_path / "labels")
    assert code == 2
    assert err.startswith(f"md: error: {tmp_path / 'pred' / '00001D.png'}: ")
    assert "3x1" in err and "2x2" in err and len(err.strip().splitlines()) == 1
