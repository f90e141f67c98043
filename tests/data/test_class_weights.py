import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from md.data import open_dataset
from md.data.class_weights import dataset_class_weights, enet_weights, label_frequencies
from md.models.heads.segmentation import SegmentationHead


def test_enet_weights_by_hand():
    labels = [np.array([[0, 0, 0, 1]]), np.array([[0, 0, 2, 2]])]
    freq = label_frequencies(labels, 3)
    assert freq.tolist() == pytest.approx([5 / 8, 1 / 8, 2 / 8])
    w = enet_weights(freq)
    assert w[1] == pytest.approx(1 / math.log(1.02 + 1 / 8), abs=1e-4)
    assert w[1] > w[2] > w[0]  # rarer classes weigh more


def test_dataset_weights_follow_pixel_shares(synth_seg):
    ds = open_dataset(synth_seg, split="train")
    w = dataset_class_weights(ds)
    assert len(w) == 9 and w[0] == min(w)  # unlabeled is by far the most common class
    assert max(w) <= 1 / math.log(1.02) + 1e-3  # ENet's bound for an absent class


def test_weighted_head_loss_is_weighted_cross_entropy():
    torch.manual_seed(0)
    weights = [0.5, 2.0, 1.0]
    head = SegmentationHead({"c3": 8, "c5": 16}, num_classes=3, class_weights=weights)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    got = head.loss({"logits": logits}, {"labels": labels})["seg"]
    want = F.cross_entropy(logits, labels, weight=torch.tensor(weights))
    assert torch.allclose(got, want)
    assert "class_weights" not in head.state_dict()  # an option, not a learned weight
    with pytest.raises(ValueError, match="3 classes"):
        SegmentationHead({"c3": 8, "c5": 16}, num_classes=3, class_weights=[1.0])
