"""Class weights against label imbalance (segmentation).

MFNet-like scenes are ~95% `unlabeled` pixels. With the paper's 14,000 iterations plain
cross-entropy learns the rare classes; at CPU budgets (hundreds of iterations) a small model
stays in the all-background minimum (measured on our synthetic data: mean accuracy exactly
1/9). The ENet weighting (Paszke et al. 2016), w_c = 1 / ln(c + p_c) with p_c the class's
pixel share in the training labels and c = 1.02, bounds the rare-class weight at ~50 and is
what the CPU presets use; the `gpu-full` preset keeps the paper's plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from md.data.layout import PairedDataset


def label_frequencies(labels: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Pixel share of each class over all label maps (sums to 1)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for lab in labels:
        counts += np.bincount(np.asarray(lab).ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return counts / total if total else np.full(num_classes, 1.0 / num_classes)


def enet_weights(freq: np.ndarray, c: float = 1.02) -> tuple[float, ...]:
    """w_c = 1 / ln(c + p_c), rounded to 4 decimals so configs stay readable and exact."""
    return tuple(round(float(w), 4) for w in 1.0 / np.log(c + np.asarray(freq, np.float64)))


def dataset_class_weights(ds: PairedDataset, num_classes: int = 9) -> tuple[float, ...]:
    """ENet weights from the label files of a segmentation dataset's samples."""
    labels = (np.asarray(Image.open(s.target_path)) for s in ds.samples)
    return enet_weights(label_frequencies(labels, num_classes))
