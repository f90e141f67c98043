"""md.eval: the published evaluation protocols.

- `md.eval.kaist`: KAIST log-average miss rate, reasonable setting (all / day / night).
- `md.eval.mfnet`: MFNet mean accuracy and mean IoU over 9 classes incl. unlabeled.
"""

from md.eval.kaist import (
    KAIST_REASONABLE,
    Annotations,
    Detections,
    ImageDetections,
    ImageGroundTruth,
    ReasonableSetting,
    evaluate_detections,
    evaluate_kaist,
    load_annotations,
    load_results,
    miss_rates,
    write_results,
)
from md.eval.mfnet import evaluate_arrays, evaluate_predictions

__all__ = [
    "KAIST_REASONABLE",
    "Annotations",
    "Detections",
    "ImageDetections",
    "ImageGroundTruth",
    "ReasonableSetting",
    "evaluate_arrays",
    "evaluate_detections",
    "evaluate_kaist",
    "evaluate_predictions",
    "load_annotations",
    "load_results",
    "miss_rates",
    "write_results",
]
