"""Issue 18, experiment 3: what a GAFF teacher's masks learn, and how much of its training
loss they are.

    python bench/gaff_masks.py TEACHER.pt --data D [--split test] [--out DIR] [--samples 4]

Runs the teacher over the split (eval mode, full-resolution pairs) and prints JSON, per GAFF
level: the mean intra-modality masks (visible, thermal), the mean inter-modality weight of
visible, the teacher mask of MD eq. 3 (mean, fraction above 0.5, fraction a store writes as
0: below half its 1/255 step), its mean on foreground cells (ground-truth foreground >= 0.5)
and on background cells (foreground 0), the ground-truth foreground the teacher is
supervised with (`TwoStreamTeacher.foreground`: for segmentation the non-background fraction
of each cell) and the soft Dice of the teacher mask against it. From the training log beside
the checkpoint (``*.metrics.jsonl``) it adds the loss parts at the first iteration and the
mean of the last 5 records, and the GAFF share of the total. With ``--out`` it writes
``masks_<i>.png`` for the first ``--samples`` images (and ``masks.png``, all of them stacked), in the spirit of GAFF / MD Fig. 4:
visible | thermal | labels, then per level intra visible | intra thermal | teacher mask,
grey 0 = black, 1 = white, nearest-upsampled to the image size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from md.data import open_dataset
from md.data.collate import collate
from md.data.inspect import MFNET_PALETTE, false_colour
from md.models import TwoStreamTeacher, load_model

STORE_ZERO = 0.5 / 255  # a store writes round(255 m) as uint8: below this it is 0


def _log_share(ckpt: Path, window: int = 5) -> dict[str, Any] | None:
    log = ckpt.with_name(ckpt.name.removesuffix(".pt") + ".metrics.jsonl")
    if not log.exists():
        return None
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("kind", "train") == "train" and "loss/total" in r]
    if not rows:
        return None
    parts = sorted(k.removeprefix("loss/") for k in rows[0] if k.startswith("loss/"))

    def at(recs: list[dict[str, Any]]) -> dict[str, float]:
        out = {p: statistics.fmean(r[f"loss/{p}"] for r in recs) for p in parts}
        gaff = out.get("gaff_intra", 0.0) + out.get("gaff_inter", 0.0)
        out["gaff_share"] = gaff / out["total"] if out["total"] else float("nan")
        return out

    return {
        "log": str(log),
        "first": {"iteration": rows[0]["iteration"], **at(rows[:1])},
        "last": {"iteration": rows[-1]["iteration"], "window": window, **at(rows[-window:])},
    }


def mask_stats(
    teacher: TwoStreamTeacher, batches: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Per level: the statistics of the module docstring over every cell of every batch."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with torch.no_grad():
        for batch in batches:
            out = teacher(batch["visible"], batch["thermal"])
            for lv, g in out["gaff"].items():
                m = g["teacher_mask"]
                fg = teacher.foreground(batch, tuple(m.shape[-2:])).to(m.dtype)
                s = sums[lv]
                s["intra_visible"].append(float(g["intra_vis"].mean()))
                s["intra_thermal"].append(float(g["intra_th"].mean()))
                s["inter_visible"].append(float(g["inter"][:, 0].mean()))
                s["teacher_mask"].append(float(m.mean()))
                s["teacher_mask_above_half"].append(float((m > 0.5).float().mean()))
                s["teacher_mask_stored_zero"].append(float((m < STORE_ZERO).float().mean()))
                s["foreground"].append(float(fg.mean()))
                s["foreground_cells"].append(float((fg >= 0.5).float().mean()))
                on, off = m[fg >= 0.5], m[fg == 0]
                s["_fg_sum"].append(float(on.sum()))
                s["_fg_n"].append(float(on.numel()))
                s["_bg_sum"].append(float(off.sum()))
                s["_bg_n"].append(float(off.numel()))
                inter = float((m * fg).sum())
                s["_dice_num"].append(2 * inter)
                s["_dice_den"].append(float(m.sum() + fg.sum()))
    stats: dict[str, dict[str, float]] = {}
    for lv, s in sums.items():
        row = {k: statistics.fmean(v) for k, v in s.items() if not k.startswith("_")}
        fg_n, bg_n = sum(s["_fg_n"]), sum(s["_bg_n"])
        row["teacher_mask_on_foreground"] = sum(s["_fg_sum"]) / fg_n if fg_n else float("nan")
        row["teacher_mask_on_background"] = sum(s["_bg_sum"]) / bg_n if bg_n else float("nan")
        den = sum(s["_dice_den"])
        row["dice_teacher_mask_vs_foreground"] = sum(s["_dice_num"]) / den if den else 1.0
        stats[lv] = row
    return stats


def _grey(m: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """(1, h, w) in [0, 1] -> an 8-bit grey image of `size` (H, W), nearest upsampling."""
    up = F.interpolate(m[None].float(), size=size, mode="nearest")[0, 0]
    return Image.fromarray((up.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "L")


def figure(teacher: TwoStreamTeacher, item: dict[str, Any]) -> Image.Image:
    """One row: visible | thermal | labels | per level intra vis | intra th | teacher mask."""
    batch = collate([item])
    with torch.no_grad():
        out = teacher(batch["visible"], batch["thermal"])
    h, w = item["visible"].shape[-2:]
    vis = (item["visible"].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8)
    tiles = [Image.fromarray(vis.numpy(), "RGB"), false_colour(item["thermal"]).convert("RGB")]
    if "labels" in item:
        lab = MFNET_PALETTE[np.clip(item["labels"].numpy(), 0, len(MFNET_PALETTE) - 1)]
        tiles.append(Image.fromarray(lab.astype(np.uint8), "RGB"))
    for g in out["gaff"].values():
        for key in ("intra_vis", "intra_th", "teacher_mask"):
            tiles.append(_grey(g[key][0], (h, w)).convert("RGB"))
    gap = 2
    sheet = Image.new("RGB", (len(tiles) * (w + gap) - gap, h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * (w + gap), 0))
    return sheet


def run(
    teacher_path: str | Path,
    data: str | Path,
    split: str = "test",
    batch_size: int = 8,
    out: str | Path | None = None,
    samples: int = 4,
) -> dict[str, Any]:
    model, ckpt = load_model(teacher_path)
    if not isinstance(model, TwoStreamTeacher):
        raise SystemExit(f"{teacher_path}: a {ckpt['model_kind']} model, not a GAFF teacher")
    ds = open_dataset(data, split=split)
    items = [ds[i] for i in range(len(ds))]
    batches = [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    result: dict[str, Any] = {
        "teacher": str(teacher_path),
        "data": str(data),
        "split": split,
        "samples": len(items),
        "levels": mask_stats(model, batches),
        "loss": _log_share(Path(teacher_path)),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rows = [figure(model, item) for item in items[:samples]]
        for i, row in enumerate(rows):
            row.save(out / f"masks_{i}.png", optimize=True)
        result["figures"] = [str(out / f"masks_{i}.png") for i in range(len(rows))]
        if rows:  # every row stacked: one figure for the docs
            sheet = Image.new("RGB", (rows[0].width, sum(r.height + 2 for r in rows) - 2), "white")
            for i, row in enumerate(rows):
                sheet.paste(row, (0, i * (row.height + 2)))
            sheet.save(out / "masks.png", optimize=True)
            result["figures"].append(str(out / "masks.png"))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None)
    p.add_argument("--samples", type=int, default=4)
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    res = run(a.teacher, a.data, a.split, a.batch_size, a.out, a.samples)
    json.dump(res, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
