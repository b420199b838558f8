"""Out-of-distribution detection with a trained model: statistics (pure functions of per-image values), the
per-image values a model gives for them, detection metrics, and OODDetector (fit, score, p_values, predict)."""

from vaelab.detection.detector import DEFAULT_STATISTIC, STATISTICS, OODDetector
from vaelab.detection.metrics import auprc, auroc, detection_metrics, fpr_at_tpr, roc_curve

__all__ = [
    "DEFAULT_STATISTIC",
    "STATISTICS",
    "OODDetector",
    "auprc",
    "auroc",
    "detection_metrics",
    "fpr_at_tpr",
    "roc_curve",
]
