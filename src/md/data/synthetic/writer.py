"""Writing a dataset: the `md data synth` config, the KAIST and MFNet files, and
synthetic.json (enough to regenerate the folder byte for byte)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from md.data.mfnet import CLASSES as MFNET_CLASSES
from md.data.synthetic.constants import (
    DEFAULT_SIZE,
    GENERATOR_VERSION,
    KAIST_CATEGORIES,
    MAX_SAMPLES,
    SPLITS,
    Task,
)
from md.data.synthetic.domains import DOMAINS, apply_domain, check_domain, domain_index
from md.data.synthetic.sample import Box, SyntheticSample, render_sample
from md.errors import ConfigError, DataError


@dataclass(frozen=True)
class SynthConfig:
    """What `md data synth` generates (saved as synthetic.json beside the data)."""

    task: Task = "detection"
    n_train: int = 64  # samples in train.txt (half day, half night)
    n_test: int = 32  # samples in test.txt
    size: tuple[int, int] | None = None  # (width, height) px; None: the task's default
    seed: int = 0
    domain: str = "none"  # md.data.synthetic.domains: fog, rain, winter, thermal-gain, night-only
    # (train share, test share) of frames whose people wear the rare appearance
    # (`md data synth --appearance 0.05:0.5`); None: not drawn, output as before
    appearance: tuple[float, float] | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size or DEFAULT_SIZE[self.task]

    def check(self) -> None:
        """`ConfigError` with the fix for values the generator cannot honour."""
        if self.task not in DEFAULT_SIZE:
            raise ConfigError(f"task {self.task!r}: use detection or segmentation")
        for name in ("n_train", "n_test"):
            n = getattr(self, name)
            if not 0 <= n <= MAX_SAMPLES:
                raise ConfigError(f"{name}={n}: use 0..{MAX_SAMPLES} samples per split")
        if self.n_train + self.n_test == 0:
            raise ConfigError("n_train and n_test are both 0: ask for at least one sample")
        check_domain(self.domain)
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed}: use a non-negative integer")
        if self.appearance is not None and (
            len(self.appearance) != 2 or not all(0.0 <= p <= 1.0 for p in self.appearance)
        ):
            raise ConfigError(
                f"appearance={self.appearance}: give TRAIN:TEST shares in 0..1, e.g. 0.05:0.5"
            )
        if self.appearance is not None and self.task != "detection":
            raise ConfigError("appearance: only for --task detection (people are boxes there)")
        w, h = self.image_size
        if w < 64 or h < 64 or w % 8 or h % 8 or w > 4096 or h > 4096:
            raise ConfigError(
                f"size {w}x{h}: use multiples of 8 between 64 and 4096 (so thermal can be "
                "downsampled by 8 per side), e.g. 160x128"
            )


def metadata(cfg: SynthConfig) -> dict[str, object]:
    """The content of synthetic.json: enough to regenerate the folder byte for byte."""
    w, h = cfg.image_size
    meta: dict[str, object] = {
        "generator": "md.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "task": cfg.task,
        "layout": "kaist" if cfg.task == "detection" else "mfnet",
        "seed": cfg.seed,
        "size": [w, h],
        "splits": {
            split: {"samples": n, "day": (n + 1) // 2, "night": n // 2}
            for split, n in (("train", cfg.n_train), ("test", cfg.n_test))
        },
        "regenerate": (
            f"md data synth --task {cfg.task} --n-train {cfg.n_train} --n-test {cfg.n_test} "
            f"--size {w}x{h} --seed {cfg.seed} --out DIR"
        ),
    }
    if cfg.domain != "none":  # clean sets keep their synthetic.json byte for byte
        meta["domain"] = cfg.domain
        command = str(meta["regenerate"]).removesuffix(" --out DIR")
        meta["regenerate"] = f"{command} --domain {cfg.domain} --out DIR"
    if cfg.appearance is not None:
        train_share, test_share = cfg.appearance
        meta["appearance"] = {"train": train_share, "test": test_share, "field": "appearance"}
        meta["regenerate"] = str(meta["regenerate"]).replace(
            " --out DIR", f" --appearance {train_share}:{test_share} --out DIR"
        )
    if cfg.task == "detection":
        # The KAIST 'reasonable' height threshold (55 px at 512 rows) at this image height.
        meta["reasonable_min_height"] = round(55 * h / 512, 2)
    else:
        meta["classes"] = list(MFNET_CLASSES)
    return meta


def iter_samples(cfg: SynthConfig, split: str) -> Iterator[SyntheticSample]:
    n = cfg.n_train if split == "train" else cfg.n_test
    for i in range(n):
        index = domain_index(cfg.domain, i)
        look = None if cfg.appearance is None else appearance_of(cfg, split, i)
        sample = render_sample(cfg.task, cfg.seed, split, index, cfg.image_size, look)
        if cfg.domain != "none":
            key = [cfg.seed, SPLITS.index(split), index, DOMAINS.index(cfg.domain)]
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
            sample = apply_domain(sample, cfg.domain, rng)
        yield sample


def appearance_of(cfg: SynthConfig, split: str, index: int) -> str:
    """rare / common for one frame: its own stream (not the frame's), so the share moves
    nothing else; an exact share per split (the first round(share x n) of a seeded
    permutation are rare), not a coin per frame."""
    assert cfg.appearance is not None
    n = cfg.n_train if split == "train" else cfg.n_test
    share = cfg.appearance[0 if split == "train" else 1]
    key = [GENERATOR_VERSION, cfg.seed, SPLITS.index(split), 0xA99E]
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key))).permutation(n)
    rare = set(order[: round(share * n)].tolist())
    return "rare" if index in rare else "common"


def save_png(array: NDArray[np.uint8], mode: str, path: Path) -> None:
    """PNG with fixed settings and no metadata chunks: same pixels -> same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format="PNG", compress_level=6, optimize=False)


def write_kaist_sample(root: Path, sample: SyntheticSample) -> None:
    """visible/ and lwir/ PNGs and a bbGt v3 file. KAIST stores lwir as 3-channel grey;
    one channel holds the same pixels at a third of the bytes, and readers convert to grey."""
    set_name, video, frame = sample.id.split("/")
    folder = root / "images" / set_name / video
    save_png(sample.visible, "RGB", folder / "visible" / f"{frame}.png")
    save_png(sample.thermal, "L", folder / "lwir" / f"{frame}.png")
    lines = ["% bbGt version=3", *(b.bbgt_line() for b in sample.boxes)]
    annotation = root / "annotations" / set_name / video / f"{frame}.txt"
    annotation.parent.mkdir(parents=True, exist_ok=True)
    annotation.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_mfnet_sample(root: Path, sample: SyntheticSample) -> None:
    """images/NAME.png as RGBA = RGB + thermal, labels/NAME.png as one channel 0..8."""
    save_png(
        np.dstack([sample.visible, sample.thermal]), "RGBA", root / "images" / f"{sample.id}.png"
    )
    save_png(sample.labels, "L", root / "labels" / f"{sample.id}.png")


def kaist_json(
    samples: Sequence[tuple[str, tuple[Box, ...]]], size: tuple[int, int]
) -> dict[str, object]:
    """Test annotations in the KAIST_annotation.json format (image ids in list order).

    'people' boxes are written as category 1 with ignore = 1, as in the improved KAIST
    test annotations, so any evaluator that honours the ignore flag skips them.
    """
    w, h = size
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id, (name, boxes) in enumerate(samples):
        images.append({"id": image_id, "im_name": name, "height": h, "width": w})
        for b in boxes:
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [b.x, b.y, b.w, b.h],
                    "height": b.h,
                    "occlusion": b.occlusion,
                    "ignore": b.ignore,
                    **({"appearance": b.appearance} if b.appearance else {}),
                }
            )
    info = {"dataset": "md synthetic (KAIST layout)", "generator_version": GENERATOR_VERSION}
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": KAIST_CATEGORIES,
    }


def run(cfg: SynthConfig, out: str | Path) -> dict[str, object]:
    """Generate the dataset of `cfg` into the new (or empty) folder `out`; returns the
    metadata written to synthetic.json."""
    cfg.check()
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: output exists and is not an empty folder; pass a new --out path")
    root.mkdir(parents=True, exist_ok=True)
    write = write_kaist_sample if cfg.task == "detection" else write_mfnet_sample
    looks: dict[str, str] = {}
    for split in SPLITS:
        ids, test_boxes = [], []
        for sample in iter_samples(cfg, split):
            write(root, sample)
            ids.append(sample.id)
            if cfg.appearance is not None:
                looks[sample.id] = appearance_of(cfg, split, len(ids) - 1)
            test_boxes.append((sample.id, sample.boxes))
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        if split == "test" and cfg.task == "detection":
            text = json.dumps(kaist_json(test_boxes, cfg.image_size))  # one line, like KAIST's
            (root / "annotations.json").write_text(text + "\n", encoding="utf-8")
    if cfg.appearance is not None:  # per-frame groups: md evaluate --groups appearance
        text = json.dumps({"appearance": looks}, indent=1)
        (root / "groups.json").write_text(text + "\n", encoding="utf-8")
    meta = metadata(cfg)
    (root / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
