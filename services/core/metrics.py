"""Classification quality measures on label arrays: accuracy and macro-F1."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def accuracy(y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64]) -> float:
    if len(y_true) == 0:
        return 0.0
    return float(np.mean(y_true == y_pred))


def confusion(
    y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], n_classes: int
) -> npt.NDArray[np.int64]:
    """Counts [true class, predicted class]."""
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def macro_f1(y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or prediction."""
    cm = confusion(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = np.divide(
        2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0
    )
    return float(f1[present].mean())
