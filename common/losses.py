"""The loss every script trains with: per-pixel cross-entropy that skips void."""

from __future__ import annotations

import keras
import numpy as np

from common.constants import IGNORE_LABEL


def segmentation_loss(reduction: str = "sum_over_batch_size") -> keras.losses.Loss:
    """Cross-entropy on logits, averaged over the non-void pixels of the batch.

    `ignore_class=255` masks void pixels out of both the sum and the count, so
    object borders neither pull the loss towards background nor dilute it. Per
    pixel class weights, when used, arrive as the dataset's third element
    (Keras' `sample_weight`). `reduction="sum"` gives the sum over non-void
    pixels instead, for a loop that divides by a count of its own (the
    multi-worker loop divides by the whole global batch's non-void pixels).
    """
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE_LABEL, reduction=reduction
    )


def median_frequency_weights(
    class_pixels: np.ndarray, present_pixels: np.ndarray
) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015; SegNet, Sec. 3.2).

    weight_c = median(freq) / freq_c, where freq_c is the pixels of class c
    divided by the pixels of the images in which c occurs. Rare classes weigh
    more than 1, common ones less. A class that never occurs gets weight 0.
    Use `common.voc.class_pixel_counts` for the two inputs.
    """
    class_pixels = np.asarray(class_pixels, np.float64)
    present_pixels = np.asarray(present_pixels, np.float64)
    occurs = class_pixels > 0
    frequency = np.zeros_like(class_pixels)
    frequency[occurs] = class_pixels[occurs] / present_pixels[occurs]
    weights = np.zeros_like(class_pixels)
    weights[occurs] = np.median(frequency[occurs]) / frequency[occurs]
    return weights.astype(np.float32)
