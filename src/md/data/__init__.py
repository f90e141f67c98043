"""Datasets of visible + thermal pairs in the KAIST (detection) and MFNet (segmentation)
layouts: `open_dataset` detects the layout and returns a map-style dataset whose items follow
docs/internals.md ("Images and samples"); `collate` batches them; `transforms` holds the
thermal down/up-sampling and joint flips / crops.
"""

from md.data.collate import collate
from md.data.kaist import KaistDataset
from md.data.layout import PairedDataset, Sample, dataset_fingerprint, validate
from md.data.mfnet import MfnetDataset
from md.data.opening import detect_layout, open_dataset

__all__ = [
    "KaistDataset",
    "MfnetDataset",
    "PairedDataset",
    "Sample",
    "collate",
    "dataset_fingerprint",
    "detect_layout",
    "open_dataset",
    "validate",
]
