"""The streaming loader: shard-aware sampling, flips from stored views, aligned crops,
workers, and live (online) targets equal to stored ones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from md.data import open_dataset
from md.models import load_model
from md.stores import open_store
from md.student_train.config import StudentTrainConfig
from md.student_train.loader import (
    DistillDataset,
    ShardAwareSampler,
    build_input,
    cut_map,
    draw_augment,
    unpack_labels,
)
from md.student_train.losses import DistillationLoss
from md.student_train.model import live_targets, stored_targets
from md.student_train.resolve import prepare
from md.student_train.run import make_loader
from tests.fp import fp16_target_tolerance, mask_target_tolerance

TINY = {"width": 0.125, "head_channels": 32, "batch_size": 2, "progress": False}


# --- sampler ---------------------------------------------------------------------------------


def _sampler(mask=None, seed=0, batch=5, window=2):
    mask = np.ones(40, dtype=bool) if mask is None else mask
    return ShardAwareSampler(40, 4, mask, batch, seed, window_shards=window)


def test_sampler_is_a_function_of_seed_and_epoch():
    a, b = _sampler(), _sampler()
    assert [a.batch(i) for i in range(20)] == [b.batch(i) for i in range(20)]
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert not np.array_equal(a.epoch_order(0), _sampler(seed=1).epoch_order(0))
    # Resuming at iteration k: a fresh sampler gives the same batch k (no hidden state).
    assert _sampler().batch(13) == a.batch(13)


def test_sampler_covers_each_written_row_once_per_epoch():
    mask = np.ones(40, dtype=bool)
    mask[8:12] = False  # shard 2 unwritten (--allow-partial)
    s = _sampler(mask)
    for epoch in range(3):
        order = s.epoch_order(epoch)
        assert sorted(order.tolist()) == np.flatnonzero(mask).tolist()
    # Iteration batches run on across epochs: positions 0..35 are epoch 0, 36.. epoch 1.
    rows = [r for i in range(14) for r, _ in s.batch(i)]
    assert rows[:36] == s.epoch_order(0).tolist() and rows[36:] == s.epoch_order(1)[:34].tolist()


def test_sampler_batches_stay_within_shard_windows():
    s = _sampler(batch=5, window=2)  # windows of 2 shards = 8 samples
    order = s.epoch_order(0)
    shards = order // 4
    windows = [set(shards[i : i + 8].tolist()) for i in range(0, 40, 8)]
    assert all(len(w) == 2 for w in windows)  # each window is two whole shards
    for i in range(8):  # epoch 0 = iterations 0..7 (40 rows, batch 5)
        touched = {r // 4 for r, _ in s.batch(i)}
        first = (i * 5) // 8
        span = windows[first] | (windows[first + 1] if first + 1 < len(windows) else set())
        assert touched <= span and len(touched) <= 2 * s.window_shards
    in_window = [i for i in range(8) if (i * 5) // 8 == (i * 5 + 4) // 8]
    assert all(len({r // 4 for r, _ in s.batch(i)}) <= s.window_shards for i in in_window)


def test_sampler_set_epoch_iterates_that_epoch():
    s = _sampler(batch=6)
    s.set_epoch(2)
    batches = list(s)
    assert len(batches) == len(s) == 7 and len(batches[-1]) == 4
    assert [r for b in batches for r, _ in b] == s.epoch_order(2).tolist()
    assert batches[0] == [s.key(2 * 40 + j) for j in range(6)]


# --- crops and flips --------------------------------------------------------------------------


def test_cut_map_aligned_windows():
    t = torch.arange(10 * 12).view(1, 10, 12)  # stride 8: a 80x96 image
    assert torch.equal(cut_map(t, (16, 32, 64, 64), 8), t[:, 2:10, 4:12])
    with pytest.raises(ValueError, match="not aligned"):
        cut_map(t, (4, 0, 64, 64), 8)
    with pytest.raises(ValueError, match="exceeds"):
        cut_map(t, (32, 0, 64, 64), 8)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _interior(t: torch.Tensor, m: int) -> torch.Tensor:
    return t[..., m : t.shape[-2] - m, m : t.shape[-1] - m]


def test_crop_cut_targets_match_teacher_on_cropped_input(
    full_store, det_teacher, synth_det, capsys
):
    """Cut stored targets vs the teacher's output on the cropped input: they agree away from
    the crop's cut edges (there, the crop's zero padding replaces real context). A window
    shifted by 32 px matches clearly worse, so the cut is aligned, not merely similar."""
    teacher, _ = load_model(det_teacher)
    ds = open_dataset(synth_det, split="train")
    store = open_store(full_store)
    item = ds[0]
    window = top, left, h, w = 0, 32, 64, 64  # of a 96x80 image: cut edges left and bottom
    with torch.no_grad():
        out = teacher.forward_features(
            item["visible"][None, :, top : top + h, left : left + w],
            item["thermal"][None, :, top : top + h, left : left + w],
        )
    stored = store.read([0], names=["features/c3"])["features/c3"][0]
    cut = cut_map(torch.from_numpy(stored), window, 8)
    live = out["features"]["c3"][0]
    assert cut.shape == live.shape == (16, 8, 8)
    interior = _cos(_interior(cut, 2), _interior(live, 2))  # 16 px from every edge
    whole = _cos(cut, live)
    shifted = _cos(
        _interior(cut_map(torch.from_numpy(stored), (0, 0, h, w), 8), 2), _interior(live, 2)
    )
    with capsys.disabled():
        print(
            f"\ncrop consistency, c3 cosine: interior {interior:.4f}, whole window "
            f"{whole:.4f}, window shifted 32 px {shifted:.4f}"
        )
    assert interior > 0.98 and interior > whole
    assert shifted < interior - 0.05


def _flip_seeds(flip: bool, n: int = 2):
    seeds = (s for s in range(100) if draw_augment(s, (80, 96), True, None).flip == flip)
    return [next(seeds) for _ in range(n)]


def test_flips_use_the_stored_flipped_views(full_store):
    cfg = StudentTrainConfig(store=str(full_store), flip=True, device_inputs=False, **TINY)
    setup = prepare(cfg)
    ds = DistillDataset(setup.source)
    store = open_store(full_store)
    flipped, plain = _flip_seeds(True), _flip_seeds(False)
    samples = ds.__getitems__([(1, flipped[0]), (5, plain[0]), (6, flipped[1])])
    want = store.read([1, 5, 6], names=["features_flip/c3", "features/c3", "inputs/visible"])
    assert np.array_equal(samples[0]["target/features/c3"].numpy(), want["features_flip/c3"][0])
    assert np.array_equal(samples[1]["target/features/c3"].numpy(), want["features/c3"][1])
    assert np.array_equal(samples[2]["target/features/c3"].numpy(), want["features_flip/c3"][2])
    # The input is mirrored to match (the targets are not re-flipped).
    vis = torch.from_numpy(want["inputs/visible"][0]).float() / 255
    assert torch.equal(samples[0]["x"][:3], vis.flip(-1))
    assert samples[0]["x"].shape == (6, 80, 96)


def test_workers_give_the_same_batches(full_store):
    cfg = StudentTrainConfig(store=str(full_store), flip=True, crop=(64,), **TINY)
    setup = prepare(cfg)
    cpu = torch.device("cpu")
    one = list(make_loader(setup, 0, 4, cpu, num_workers=0))
    two = list(make_loader(setup, 0, 4, cpu, num_workers=2))
    assert [b["id"] for b in one] == [b["id"] for b in two]
    for a, b in zip(one, two, strict=True):
        a, b = build_input(a), build_input(b)
        assert torch.equal(a["x"], b["x"]) and torch.equal(
            a["target/attention/c4"], b["target/attention/c4"]
        )
        assert a["x"].shape == (2, 6, 64, 64) and a["target/features/c3"].shape[-2:] == (8, 8)


def _codec_loss_bound(loss: DistillationLoss, out, live, tolerance) -> dict[str, float]:
    """How far the codec can move each loss part: the first-order change sum |dL/dt| * tol
    over every target element, doubled for the higher orders (on these batches the
    linearisation reproduces the real difference to within 5 %), plus the float32
    evaluation of the loss (2^-16 relative: sums of <= 2^12 nonnegative terms)."""
    targets = {k: {lv: t.clone().requires_grad_() for lv, t in v.items()} for k, v in live.items()}
    parts = loss(out, targets)
    leaves = [targets[k][lv] for k in ("features", "masks") for lv in loss.levels]
    bounds = {}
    for name in ("attention", "semantic"):
        grads = torch.autograd.grad(parts[name], leaves, allow_unused=True, retain_graph=True)
        first = sum(
            float((g.abs().double() * tolerance[k][lv]).sum())
            for g, (k, lv) in zip(
                grads, [(k, lv) for k in ("features", "masks") for lv in loss.levels], strict=True
            )
            if g is not None
        )
        bounds[name] = 2 * first + 2.0**-16 * abs(parts[name].item())
    return bounds


def test_online_targets_equal_stored_targets(full_store, det_teacher, synth_det):
    """Same batch, same flips and crops: live teacher targets == stored ones up to the
    lossless codec (fp16 features, masks in 1/255 steps), and so are the losses. The float32
    slack comes from a float64 run of the same teacher (`tests.fp`), not from one CPU."""
    common = {"store": str(full_store), "data": str(synth_det), "flip": True, "crop": (64,), **TINY}
    offline = prepare(StudentTrainConfig(**common))
    online = prepare(StudentTrainConfig(online_teacher=str(det_teacher), **common))
    teacher64 = copy.deepcopy(online.teacher).double()
    strides = dict(online.model.strides)
    cpu = torch.device("cpu")
    for b_off, b_on in zip(
        make_loader(offline, 0, 3, cpu), make_loader(online, 0, 3, cpu), strict=True
    ):
        assert b_off["id"] == b_on["id"]
        stored = stored_targets(b_off, offline.cfg.levels, offline.source.store.preset)
        live = live_targets(online.teacher, b_on, strides)
        exact = live_targets(
            teacher64,
            {**b_on, **{k: b_on[k].double() for k in ("teacher/visible", "teacher/thermal")}},
            strides,
        )
        tolerance: dict[str, dict[str, torch.Tensor]] = {"features": {}, "masks": {}}
        for lv in offline.cfg.levels:
            f_s, f_l = stored["features"][lv], live["features"][lv]
            tol = fp16_target_tolerance(f_l, exact["features"][lv])
            assert bool(((f_s.double() - f_l.double()).abs() <= tol).all()), lv
            m_tol = mask_target_tolerance(live["masks"][lv], exact["masks"][lv])
            assert (stored["masks"][lv] - live["masks"][lv]).abs().max() <= m_tol, lv
            tolerance["features"][lv], tolerance["masks"][lv] = tol, torch.tensor(m_tol)
        with torch.no_grad():
            out = offline.model(build_input(b_off)["x"])
        # focal_weights_grad: the same loss values, with the softmax weights' derivative too.
        loss = DistillationLoss(offline.cfg.levels, focal_weights_grad=True)
        a, b = loss(out, stored), loss(out, live)
        bound = _codec_loss_bound(loss, out, live, tolerance)
        for k in ("attention", "semantic"):
            assert abs(a[k].item() - b[k].item()) <= bound[k], (k, a[k].item(), b[k].item())


def test_bundled_labels_unpack_to_dataset_fields():
    rows = np.zeros((4, 6), dtype=np.float32)
    rows[:2] = [[1, 2, 11, 22, 0, 1], [5, 6, 15, 26, 1, 2]]
    det = unpack_labels("detection", {"boxes": rows, "num_boxes": np.int32(2)})
    assert det["boxes"].tolist() == [[1, 2, 11, 22], [5, 6, 15, 26]]
    assert det["box_ignore"].tolist() == [False, True] and det["box_occlusion"].tolist() == [1, 2]
    seg = unpack_labels("segmentation", {"labels": np.full((2, 3), 8, dtype=np.uint8)})
    assert seg["labels"].dtype == torch.int64 and seg["labels"].shape == (2, 3)


def test_batches_ship_stored_targets_decoded_exactly_in_the_step(full_store):
    """The loader ships targets as stored (fp16 features, uint8 masks: no float32 on the
    host); `stored_targets` decodes them to exactly what `TargetStore.read` returns."""
    cfg = StudentTrainConfig(store=str(full_store), **TINY)
    setup = prepare(cfg)
    batch = next(iter(make_loader(setup, 0, 1, torch.device("cpu"))))
    assert setup.source.store is not None
    rows = [setup.sampler.batch(0)[j][0] for j in range(cfg.batch_size)]
    want = setup.source.store.read(rows)
    got = stored_targets(batch, setup.cfg.levels, setup.source.store.preset)
    for lv in setup.cfg.levels:
        assert batch[f"target/features/{lv}"].dtype == torch.float16
        assert batch[f"target/attention/{lv}"].dtype == torch.uint8
        for key, name in (("features", "features"), ("masks", "attention")):
            ref = torch.from_numpy(want[f"{name}/{setup.source.target_levels[lv]}"])
            assert got[key][lv].dtype == torch.float32
            assert torch.equal(got[key][lv].view(torch.int32), ref.view(torch.int32)), (key, lv)
    with pytest.raises(ValueError, match="need the store's codec"):
        stored_targets({**batch, "target/features/c3": batch["target/attention/c3"]}, ["c3"])


@pytest.mark.parametrize("thermal", ["16", "none"])
def test_inputs_built_on_the_device_equal_the_host_ones(full_store, thermal):
    """Bundled inputs shipped as uint8 and assembled by `build_input` give bitwise the
    host's ``x`` (flips and crops included); every other key is unchanged."""
    from md.student_train.loader import RAW_VISIBLE

    common = {"store": str(full_store), "flip": True, "crop": (64,), **TINY}
    if thermal == "none":
        common["thermal_factor"] = "none"
    host = prepare(StudentTrainConfig(device_inputs=False, **common))
    dev = prepare(StudentTrainConfig(**common))
    cpu = torch.device("cpu")
    n = 0
    for a, b in zip(make_loader(host, 0, 4, cpu), make_loader(dev, 0, 4, cpu), strict=True):
        assert "x" not in b and b[RAW_VISIBLE].dtype == torch.uint8
        built = build_input(b)
        assert set(built) == set(a)
        assert torch.equal(built["x"], a["x"]) and built["x"].dtype == torch.float32
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], built[key]), key
            elif isinstance(a[key], list) and a[key] and isinstance(a[key][0], torch.Tensor):
                assert all(torch.equal(u, v) for u, v in zip(a[key], built[key], strict=True))
            else:
                assert a[key] == built[key], key
        n += 1
    assert n == 4


def _same_batch(a, b):
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        elif isinstance(a[key], list) and a[key] and isinstance(a[key][0], torch.Tensor):
            assert all(torch.equal(u, v) for u, v in zip(a[key], b[key], strict=True)), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("aug", ["none", "flip", "flip+crop"])
def test_batches_read_whole_equal_collated_samples(full_store, aug):
    """`DistillDataset(batched=True)` builds a batch from the store's batch buffers; it is
    exactly `collate` of the per-sample items (mixed flip states and crops included)."""
    from md.data import collate

    extra = {"none": {}, "flip": {"flip": True}, "flip+crop": {"flip": True, "crop": (64,)}}[aug]
    setup = prepare(StudentTrainConfig(store=str(full_store), **{**TINY, "batch_size": 4}, **extra))
    one, whole = DistillDataset(setup.source), DistillDataset(setup.source, batched=True)
    assert whole.reads_batches()
    flips = set()
    for it in range(4):
        keys = setup.sampler.batch(it)
        got = collate(whole.__getitems__(keys))
        _same_batch(collate(one.__getitems__(keys)), got)
        flips.update(got["input/flip"].tolist())
    assert flips == ({False, True} if aug != "none" else {False})
