"""Segmentation metrics from one streaming confusion matrix.

Mean IoU on VOC is *not* the average of per-image IoUs: it is computed once
from the confusion matrix summed over every pixel of the split (Everingham et
al., IJCV 2010, Sec. 5.3). Void pixels (255) are left out of the matrix.

Beside mean IoU, `iou_table` shows the two accuracies SegNet reports
(Badrinarayanan et al., TPAMI 2017, Sec. 4): global accuracy, the share of
non-void pixels classified right (`pixel_accuracy`), and class-average
accuracy, the mean over classes of each class's recall
(`class_average_accuracy`), which a model cannot raise by getting the large
classes (background, road, sky) right alone.

`trimap_mask` restricts scoring to a band around the ground-truth boundaries,
where an output-stride-8 network is least accurate and a CRF helps most.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import keras
import numpy as np
from keras import ops

from common.constants import IGNORE_LABEL

# The metric counts in two int32 parts, count = high * COUNT_BASE + low with
# low < COUNT_BASE: JAX has no int64 (without x64), and an int32 count wraps
# at 2**31 pixels, which VOC's val split passes in one epoch. 2**24 keeps the
# low part exact in float32, and a sum of 128 replicas' low parts in int32.
COUNT_BASE = 2**24


class ConfusionMatrix(keras.metrics.Metric):
    """Streaming confusion matrix whose `result()` is the mean IoU.

    `keras.metrics.MeanIoU` almost fits, but it multiplies counts by the sample
    weights (which are class-balancing weights when a loss uses them) and
    accumulates in float32, which stops counting exactly past 2**24 pixels per
    cell (VOC val has about 2.6e8 pixels). This metric counts every non-void
    pixel once, exactly, on every backend: in two int32 variables (see
    `COUNT_BASE`), which `matrix` joins into int64. Rows are ground truth,
    columns predictions.

    Args:
        num_classes: number of classes (void excluded).
        ignore_label: ground-truth value that is not scored.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_label: int = IGNORE_LABEL,
        name: str = "mean_iou",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.low, self.high = (
            self.add_variable(
                shape=(num_classes, num_classes),
                initializer="zeros",
                dtype="int32",
                name=f"counts_{part}",
            )
            for part in ("low", "high")
        )

    @property
    def matrix(self) -> np.ndarray:
        """The exact counts, int64 numpy `(num_classes, num_classes)`."""
        high = ops.convert_to_numpy(self.high).astype(np.int64)
        return high * COUNT_BASE + ops.convert_to_numpy(self.low)

    def set_matrix(self, matrix) -> None:
        """Make the counts `matrix` (int `(num_classes, num_classes)`)."""
        high, low = np.divmod(np.asarray(matrix, np.int64), COUNT_BASE)
        self.high.assign(high.astype(np.int32))
        self.low.assign(low.astype(np.int32))

    def update_state(self, y_true, y_pred, sample_weight=None):
        """y_true: `(B, H, W)` labels; y_pred: `(B, H, W, C)` logits. Weights unused."""
        counts = confusion_counts(y_true, y_pred, self.num_classes, self.ignore_label)
        # Each part of the sum stays below 2**31: low + low < 2 * COUNT_BASE.
        low = self.low + counts % COUNT_BASE
        self.high.assign_add(counts // COUNT_BASE + low // COUNT_BASE)
        self.low.assign(low % COUNT_BASE)

    def result(self):
        high = ops.cast(self.high, "float32")
        return mean_iou(high * COUNT_BASE + ops.cast(self.low, "float32"))

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_label=self.ignore_label)
        return config


def confusion_counts(
    y_true, y_pred, num_classes: int, ignore_label: int = IGNORE_LABEL
):
    """One batch's confusion matrix, int32 `(num_classes, num_classes)`.

    y_true: `(B, H, W)` labels; y_pred: `(B, H, W, C)` logits. Void is not counted.
    """
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    predictions = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
    scored = ops.not_equal(labels, ignore_label)
    # Cell (true, predicted) of the flattened matrix; void pixels count 0.
    # A segment sum with a fixed number of cells keeps shapes static, so this
    # also compiles under XLA and jax.jit.
    cells = ops.where(scored, labels, 0) * num_classes + predictions
    counts = ops.segment_sum(
        ops.cast(scored, "float32"), cells, num_segments=num_classes**2
    )  # Exact: a batch has far fewer than 2**24 pixels per cell.
    return ops.reshape(ops.cast(counts, "int32"), (num_classes, num_classes))


def _float_counts(matrix) -> tuple:
    """The array module to score `matrix` with, and `matrix` as its floats.

    A finished count (numpy, e.g. `ConfusionMatrix.matrix`) is scored in
    numpy float64, the same on every backend; a backend tensor (`result()`
    inside the compiled step) with keras.ops in float32, as JAX has no
    float64 without x64. numpy and keras.ops share the names used here.
    """
    if ops.is_tensor(matrix):
        return ops, ops.cast(matrix, "float32")
    return np, np.asarray(matrix, np.float64)


def _nan_mean(xp, values):
    """Mean of the non-NaN `values`, NaN if there are none (shapes stay static)."""
    present = xp.logical_not(xp.isnan(values))
    count = xp.sum(xp.where(present, 1.0, 0.0))
    total = xp.sum(xp.where(present, values, 0.0))
    return xp.where(count > 0, total / xp.maximum(count, 1.0), np.nan)


def per_class_iou(matrix):
    """IoU of each class, TP / (TP + FP + FN); NaN where a class is in no label
    and no prediction."""
    xp, matrix = _float_counts(matrix)
    true_positives = xp.diagonal(matrix)
    union = xp.sum(matrix, 0) + xp.sum(matrix, 1) - true_positives
    return xp.where(union > 0, true_positives / xp.maximum(union, 1.0), np.nan)


def mean_iou(matrix):
    """Mean of per-class IoU over the classes that occur (in labels or predictions)."""
    return _nan_mean(_float_counts(matrix)[0], per_class_iou(matrix))


def pixel_accuracy(matrix):
    """Share of non-void pixels whose predicted class is right."""
    xp, matrix = _float_counts(matrix)
    return xp.trace(matrix) / xp.maximum(xp.sum(matrix), 1.0)


def per_class_accuracy(matrix):
    """Recall of each class, TP / (its pixels in the labels); NaN where a class is in
    no label (row sum 0)."""
    xp, matrix = _float_counts(matrix)
    true_positives = xp.diagonal(matrix)
    label_pixels = xp.sum(matrix, 1)
    return xp.where(
        label_pixels > 0, true_positives / xp.maximum(label_pixels, 1.0), np.nan
    )


def class_average_accuracy(matrix):
    """SegNet's class-average accuracy: mean recall over the classes in the labels.

    A class that is only predicted, never in the labels, has no recall and is
    left out (it still lowers the IoU of the classes it was confused with).
    """
    return _nan_mean(_float_counts(matrix)[0], per_class_accuracy(matrix))


def _percent(value: float, width: int) -> str:
    """`value` as a percentage right-aligned in `width`, "-" for NaN (no pixels)."""
    return f"{'-':>{width}}" if np.isnan(value) else f"{value:>{width}.1%}"


def iou_table(matrix, class_names: Sequence[str]) -> str:
    """Per-class IoU and accuracy as a text table, with an IoU bar, and the scores.

    The bar makes "all background" obvious; "accuracy" is the class's recall
    (share of its pixels predicted as it). The last line gives mean IoU and
    SegNet's global and class-average accuracy.
    """
    matrix = np.asarray(matrix)
    ious = per_class_iou(matrix)
    accuracies = per_class_accuracy(matrix)
    gt_pixels = matrix.sum(axis=1)
    lines = [f"{'class':<14} {'IoU':>6}  {'accuracy':>8}  {'pixels':>10}"]
    for name, iou, accuracy, pixels in zip(class_names, ious, accuracies, gt_pixels):
        line = f"{name:<14} {_percent(iou, 6)}  {_percent(accuracy, 8)}  {pixels:>10,}"
        lines.append(line if np.isnan(iou) else f"{line}  {'#' * round(iou * 20)}")
    lines.append(
        f"{'mean IoU':<14} {float(mean_iou(matrix)):>6.1%}   global accuracy "
        f"{float(pixel_accuracy(matrix)):.1%}   class-average accuracy "
        f"{float(class_average_accuracy(matrix)):.1%}"
    )
    return "\n".join(lines)


class IoUReport(keras.callbacks.Callback):
    """After each validation, print per-class IoU and log the two accuracies.

    `val_pixel_accuracy` (SegNet's global accuracy) and
    `val_class_average_accuracy` join the epoch's logs, so that history.csv and
    TensorBoard (callbacks after this one) record them.

    A high global accuracy with every object class at 0% IoU means the model
    predicts background everywhere; the table makes that impossible to miss.
    `metric` is the `ConfusionMatrix` the model was compiled with: at the end
    of an epoch it holds the validation counts.
    """

    def __init__(self, metric: ConfusionMatrix, class_names: Sequence[str]):
        super().__init__()
        self.metric = metric
        self.class_names = class_names

    def on_epoch_end(self, epoch, logs=None):
        matrix = self.metric.matrix
        print(
            f"\nValidation after epoch {epoch + 1}:\n"
            f"{iou_table(matrix, self.class_names)}"
        )
        if logs is not None:
            logs["val_pixel_accuracy"] = float(pixel_accuracy(matrix))
            logs["val_class_average_accuracy"] = float(class_average_accuracy(matrix))


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """bool `(H, W)`: pixels with a 4-neighbour of another label (void included).

    Both sides of every change are marked, so a band of width N around them
    reaches N pixels into each region.
    """
    labels = np.asarray(labels)
    boundaries = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    boundaries[1:] |= vertical
    boundaries[:-1] |= vertical
    boundaries[:, 1:] |= horizontal
    boundaries[:, :-1] |= horizontal
    return boundaries


def trimap_mask(
    mask: np.ndarray, width: int, ignore_label: int = IGNORE_LABEL
) -> np.ndarray:
    """`mask` with every pixel farther than `width` pixels from a boundary made void.

    Scoring this mask gives the "trimap" IoU of DeepLab v1 (Sec. 4.1, Fig. 5)
    and v2 (Sec. 4.1, Fig. 5(b)): accuracy within a narrow band around object
    boundaries (Kohli et al., 2009), where the whole-image IoU hides how well
    edges are placed. Distances are Euclidean, to the nearest boundary pixel of
    `label_boundaries` (VOC's own 5-pixel void outlines count as boundaries).
    """
    mask = np.asarray(mask)
    # distanceTransform measures, for each non-zero pixel, the distance to the
    # nearest zero pixel: the boundaries are the zeros here.
    away_from_boundary = np.logical_not(label_boundaries(mask)).astype(np.uint8)
    distance = cv2.distanceTransform(
        away_from_boundary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    return np.where(distance <= width, mask, ignore_label).astype(mask.dtype)
