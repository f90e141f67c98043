"""The synthetic generator: determinism, layout, and the physics the paper's effects rely on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from md.cli import main
from md.data import open_dataset, validate
from md.data.synthetic import (
    CAR,
    CONE,
    DEFAULT_SIZE,
    PERSON,
    SynthConfig,
    SyntheticSample,
    render_sample,
    run,
)
from md.errors import ConfigError, DataError


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- determinism and layout --------------------------------------------------------------------


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_same_seed_gives_byte_identical_trees(tmp_path: Path, task: str) -> None:
    cfg = SynthConfig(task=task, n_train=3, n_test=2, seed=7)  # type: ignore[arg-type]
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    a, b = tree_hashes(tmp_path / "a"), tree_hashes(tmp_path / "b")
    assert a == b
    run(SynthConfig(task=task, n_train=3, n_test=2, seed=8), tmp_path / "c")  # type: ignore[arg-type]
    c = tree_hashes(tmp_path / "c")
    assert set(c) == set(a)
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in images)


def test_sample_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    run(SynthConfig(task="detection", n_train=2, n_test=1), tmp_path / "small")
    run(SynthConfig(task="detection", n_train=4, n_test=1), tmp_path / "large")
    small, large = tree_hashes(tmp_path / "small"), tree_hashes(tmp_path / "large")
    shared = [k for k in small if k.startswith(("images/", "annotations/set"))]
    assert len(shared) == 3 * 3  # visible, lwir, bbGt for 3 samples
    assert all(small[k] == large[k] for k in shared)
    assert small["annotations.json"] == large["annotations.json"]  # same test split


def test_detection_layout_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "kaist"
    meta = run(SynthConfig(task="detection", n_train=4, n_test=4, seed=3), root)
    assert meta["layout"] == "kaist" and meta["size"] == [160, 128]
    train, test = open_dataset(root, split="train"), open_dataset(root, split="test")
    assert (len(train), len(test)) == (4, 4)
    assert not validate(train) and not validate(test)
    assert [s.group for s in train.samples] == ["day", "night", "day", "night"]
    sets = [s.id[:5] for s in train.samples + test.samples]
    assert sets == ["set00", "set03", "set01", "set04", "set06", "set09", "set07", "set10"]
    item = test[0]
    assert item["visible"].shape == (3, 128, 160) and item["thermal"].shape == (1, 128, 160)
    # annotations.json holds the same boxes as the test split's bbGt files, in list order
    coco = json.loads((root / "annotations.json").read_text())
    assert [im["im_name"] for im in coco["images"]] == [s.id for s in test.samples]
    assert len(coco["annotations"]) == sum(len(test[i]["boxes"]) for i in range(len(test)))
    first = [a for a in coco["annotations"] if a["image_id"] == 0]
    for ann, box in zip(first, item["boxes"].tolist(), strict=True):
        x, y, w, h = ann["bbox"]
        assert [x, y, x + w, y + h] == box and ann["category_id"] == 1


def test_segmentation_layout_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "mfnet"
    run(SynthConfig(task="segmentation", n_train=2, n_test=2, seed=3), root)
    train, test = open_dataset(root, split="train"), open_dataset(root, split="test")
    assert [s.id for s in train.samples] == ["00001D", "00002N"]
    assert [s.id for s in test.samples] == ["50001D", "50002N"]
    assert not validate(train) and not validate(test)
    item = train[1]
    assert item["group"] == "night" and item["labels"].shape == (120, 160)
    assert json.loads((root / "synthetic.json").read_text())["classes"][8] == "bump"


def test_bad_config_and_busy_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiples of 8"):
        run(SynthConfig(size=(100, 100)), tmp_path / "x")
    with pytest.raises(ConfigError, match="seed"):
        run(SynthConfig(seed=-1), tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        run(SynthConfig(n_train=1, n_test=0), tmp_path / "busy")


def test_cli_synth(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "seg"
    result = runner.invoke(
        main,
        [
            "data",
            "synth",
            "--task",
            "segmentation",
            "--out",
            str(out),
            "--n-train",
            "2",
            "--n-test",
            "1",
            "--size",
            "96x64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 train + 1 test" in result.output
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "00001D.png",
        "00002N.png",
        "50001D.png",
    ]
    bad = runner.invoke(
        main,
        ["data", "synth", "--task", "detection", "--out", str(tmp_path / "d"), "--size", "100x64"],
    )
    assert bad.exit_code == 2 and "multiples of 8" in bad.output


# --- physics: measurable statistics on a small generated set ------------------------------------


@pytest.fixture(scope="module")
def detection_set() -> list[SyntheticSample]:
    return [render_sample("detection", 0, "train", i) for i in range(48)]


@pytest.fixture(scope="module")
def segmentation_set() -> list[SyntheticSample]:
    return [render_sample("segmentation", 0, "train", i) for i in range(16)]


def person_contrasts(sample: SyntheticSample, image: np.ndarray, min_height: int) -> list[float]:
    """|mean on the person's pixels - mean of a ring around its box|, per unoccluded person."""
    img = image.astype(np.float64)
    if img.ndim == 3:
        img = img.mean(-1)
    h, w = img.shape
    out = []
    for b in sample.boxes:
        if b.label != "person" or b.occlusion or b.h < min_height:
            continue
        box = (slice(b.y, b.y + b.h), slice(b.x, b.x + b.w))
        person = sample.labels[box] == PERSON
        pad = max(2, b.w // 2)
        y0, y1, x0, x1 = (
            max(0, b.y - pad),
            min(h, b.y + b.h + pad),
            max(0, b.x - pad),
            min(w, b.x + b.w + pad),
        )
        ring = np.ones((y1 - y0, x1 - x0), bool)
        ring[b.y - y0 : b.y - y0 + b.h, b.x - x0 : b.x - x0 + b.w] = False
        ring &= sample.labels[y0:y1, x0:x1] != PERSON
        if person.sum() >= 4 and ring.sum() >= 4:
            out.append(abs(img[box][person].mean() - img[y0:y1, x0:x1][ring].mean()))
    return out


def by_group(samples: list[SyntheticSample], group: str) -> list[SyntheticSample]:
    return [s for s in samples if s.group == group]


def noise_sigma(image: np.ndarray) -> float:
    """Robust noise estimate: MAD of horizontal neighbour differences (flat areas dominate)."""
    g = image.astype(np.float64)
    g = g.mean(-1) if g.ndim == 3 else g
    d = np.diff(g, axis=1)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def median_cnr(samples: list[SyntheticSample], modality: str) -> float:
    """Median contrast-to-noise ratio of the people in `samples` in one modality."""
    cnr = []
    for s in samples:
        image = getattr(s, modality)
        sigma = max(noise_sigma(image), 0.5)
        cnr += [c / sigma for c in person_contrasts(s, image, 0)]
    assert len(cnr) >= 20
    return float(np.median(cnr))


def test_night_visible_is_dark_and_noisy(detection_set: list[SyntheticSample]) -> None:
    day, night = by_group(detection_set, "day"), by_group(detection_set, "night")
    assert np.mean([s.visible.mean() for s in night]) < 0.5 * np.mean(
        [s.visible.mean() for s in day]
    )
    assert np.mean([noise_sigma(s.visible) for s in night]) > 2 * np.mean(
        [noise_sigma(s.visible) for s in day]
    )
    # people are hard to see in visible at night, easy in thermal
    assert median_cnr(night, "visible") < 0.5 * median_cnr(day, "visible")
    assert median_cnr(night, "thermal") > 3 * median_cnr(night, "visible")


def test_people_stand_out_more_in_thermal_at_night(detection_set: list[SyntheticSample]) -> None:
    """Sun-heated roads and walls hide people by day; cool backgrounds show them at night."""
    day = [c for s in by_group(detection_set, "day") for c in person_contrasts(s, s.thermal, 10)]
    night = [
        c for s in by_group(detection_set, "night") for c in person_contrasts(s, s.thermal, 10)
    ]
    assert len(day) >= 8 and len(night) >= 8
    assert np.median(night) > 1.5 * np.median(day)


def low_resolution(thermal: np.ndarray, factor: int = 8) -> np.ndarray:
    """Average `factor` x `factor` blocks and blow them up again (a cheap thermal sensor)."""
    h, w = thermal.shape
    small = (
        thermal.astype(np.float64).reshape(h // factor, factor, w // factor, factor).mean((1, 3))
    )
    return np.kron(small, np.ones((factor, factor)))


def test_small_people_vanish_in_low_resolution_thermal(
    detection_set: list[SyntheticSample],
) -> None:
    """Many people are below the 'reasonable' height; thermal downsampled by 8 per side
    keeps little of their contrast but most of that of near people."""
    heights = np.array([b.h for s in detection_set for b in s.boxes if b.label == "person"])
    assert np.mean(heights < 55 * DEFAULT_SIZE["detection"][1] / 512) > 0.2
    kept: dict[str, list[float]] = {"small": [], "large": []}
    for s in by_group(detection_set, "night"):
        full = person_contrasts(s, s.thermal, 0)
        low = person_contrasts(s, low_resolution(s.thermal), 0)
        people = [b.h for b in s.boxes if b.label == "person" and not b.occlusion]
        for height, f, lo in zip(people, full, low, strict=True):
            if f > 5 and (height < 16 or height >= 32):
                kept["small" if height < 16 else "large"].append(lo / f)
    assert len(kept["small"]) >= 5 and len(kept["large"]) >= 5
    assert np.median(kept["small"]) < 0.35 and np.median(kept["large"]) > 0.5


def test_person_like_clutter_has_no_thermal_signature() -> None:
    """Posters show a pedestrian in visible only: every part is at the board's temperature."""
    from md.data.synthetic import make_person, make_poster, sample_conditions

    rng = np.random.default_rng(0)
    for night in (False, True):
        cond = sample_conditions(rng, night)
        poster = make_poster(rng, cond, 0.0, 10.0)
        assert len({p.t_app for p in poster.parts}) == 1
        assert len({p.albedo for p in poster.parts}) > 2
        if night:
            person = make_person(rng, cond, 0.0, 10.0, 1.7)
            assert min(p.t_app for p in person.parts) > poster.parts[0].t_app + 3


def test_thermal_is_smoother_than_visible(detection_set: list[SyntheticSample]) -> None:
    def detail(img: np.ndarray) -> float:
        g = img.astype(np.float64)
        g = g.mean(-1) if g.ndim == 3 else g
        return float(np.abs(np.diff(g, axis=1)).mean() / (g.std() + 1e-9))

    day = by_group(detection_set, "day")
    assert np.mean([detail(s.thermal) for s in day]) < np.mean([detail(s.visible) for s in day])


def test_segmentation_classes_and_signatures(segmentation_set: list[SyntheticSample]) -> None:
    labels = np.stack([s.labels for s in segmentation_set])
    assert labels.max() <= 8
    assert set(np.unique(labels[:8])) == set(range(9))  # 8 consecutive samples: every class
    night = by_group(segmentation_set, "night")
    t = np.concatenate([s.thermal[s.labels == PERSON] for s in night])
    bg = np.concatenate([s.thermal[s.labels == 0] for s in night])
    cones = [s for s in segmentation_set if (s.labels == CONE).any()]
    assert t.mean() > bg.mean() + 40  # people are warm at night
    # cones: saturated orange in visible, not warmer than the cars around them
    for s in cones:
        rgb = s.visible[s.labels == CONE].astype(np.float64).mean(0)
        assert rgb[0] > rgb[2]
    cone_t = np.concatenate([s.thermal[s.labels == CONE] for s in cones]).mean()
    person_t = np.concatenate([s.thermal[s.labels == PERSON] for s in segmentation_set]).mean()
    assert cone_t < person_t
    assert any((s.labels == CAR).any() for s in segmentation_set)
