"""Where a run goes wrong: metrics per defect category, the image-level confusion matrix, and the ROC, PR and
PRO curves behind the summary numbers (pure numpy; the report draws them)."""

from uniadc.analysis.breakdown import category_metrics, confusion_matrix, gt_pixel_classes, pixel_confusion
from uniadc.analysis.curves import pr_curve, pro_curve, roc_curve

__all__ = [
    "category_metrics",
    "confusion_matrix",
    "gt_pixel_classes",
    "pixel_confusion",
    "pr_curve",
    "pro_curve",
    "roc_curve",
]
