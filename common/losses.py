"""The losses training minimises, chosen by `--loss`; void (255) never counts.

Cross-entropy (`segmentation_loss`, the default) scores each pixel on its own,
so a large class dominates it. The other terms aim at what the scripts report,
the intersection over union of each class: soft Dice, the Lovász-softmax
(Berman et al. 2018), and the focal loss (Lin et al. 2017), which turns
cross-entropy towards hard pixels. `make_loss({"ce": 1.0, "lovasz": 1.0})`
builds the loss of `--loss ce+lovasz`.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import ops

from common import backend
from common.backend import tf
from common.constants import IGNORE_LABEL, LOSS_TERMS


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


def make_loss(terms: Mapping[str, float]) -> keras.losses.Loss:
    """The loss of `--loss`, as `common.cli.loss_terms` parses it: term -> weight.

    Plain cross-entropy, the default, stays Keras' own `segmentation_loss()`:
    the same values and the same saved config as before `--loss` existed.
    Anything else, e.g. `{"ce": 0.5, "lovasz": 1.0}`, is a `SegmentationLoss`.
    """
    if dict(terms) == {"ce": 1.0}:
        return segmentation_loss()
    return SegmentationLoss(terms)


@keras.saving.register_keras_serializable(package="segmentation")
class SegmentationLoss(keras.losses.Loss):
    """A weighted sum of `LOSS_TERMS` on logits, each the mean of its batch.

    terms: term -> weight, e.g. `{"ce": 0.5, "lovasz": 1.0}` (`--loss
    0.5*ce+lovasz`). `gamma` is the focal term's exponent.

    Every term leaves void pixels out of its sums and counts: they change
    nothing, and an all-void batch gives 0 with zero gradients. Logits of any
    float dtype are computed on in float32. Per-pixel class weights (the
    dataset's third element, Keras' `sample_weight`) scale the ce, focal and
    dice terms; the Lovász terms ignore them (see `lovasz_softmax`).
    """

    def __init__(
        self,
        terms: Mapping[str, float],
        gamma: float = 2.0,
        name: str = "segmentation_loss",
    ):
        unknown = sorted(set(terms) - set(LOSS_TERMS))
        if not terms or unknown or min(terms.values()) <= 0:
            raise ValueError(
                f"terms must map some of {', '.join(LOSS_TERMS)} to weights > 0, "
                f"not {dict(terms)}"
            )
        super().__init__(name=name)
        self.terms = {term: float(weight) for term, weight in terms.items()}
        self.gamma = float(gamma)

    def sums_and_counts(self, labels, logits, sample_weight=None) -> tuple:
        """Each term's weighted sum and the count that makes it a mean.

        labels (batch, h, w) with void 255; logits (batch, h, w, classes).
        Returns two float32 vectors of shape (terms,); the loss is
        sum(sums / counts). Counts are non-void pixels (ce, focal), images
        with a non-void pixel (lovasz_image), or 1 for a batch with one
        (dice, lovasz), so that the multi-worker loop can divide the sums by
        the counts of the whole global batch.
        """
        pixels = flat_pixels(labels, logits, sample_weight)
        sums, counts = zip(
            *(self.term_sum_and_count(term, *pixels) for term in self.terms)
        )
        weights = ops.convert_to_tensor(list(self.terms.values()), "float32")
        return weights * ops.stack(sums), ops.stack(counts)

    def term_sum_and_count(self, term, logits, truth, valid, pixel_weights):
        if term == "ce":
            return cross_entropy(logits, truth, valid, pixel_weights)
        if term == "focal":
            return focal(logits, truth, valid, pixel_weights, self.gamma)
        if term == "dice":
            return soft_dice(logits, truth, pixel_weights)
        return lovasz_softmax(logits, truth, valid, per_image=term == "lovasz_image")

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss of this replica's batch, divided by the number of replicas.

        Under tf.distribute (TensorFlow only), Keras sums the replicas'
        gradients, and scales its own losses by 1 / replicas for that
        (`scale_loss_for_distribution` in keras/src/losses/loss.py); a Loss
        whose `call` returned one number would skip it, so this one does it
        itself. With equal batches per
        replica, ce, focal and lovasz_image then give the mean of the global
        batch; dice and lovasz the mean of the replicas' values. JAX's
        `keras.distribution` compiles one step for the global batch, so the
        loss already sees all of it there.
        """
        sums, counts = self.sums_and_counts(y_true, y_pred, sample_weight)
        loss = ops.sum(ops.divide_no_nan(sums, counts))
        if backend.name() == "tensorflow":
            loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
        return loss

    def get_config(self) -> dict:
        return {"name": self.name, "terms": dict(self.terms), "gamma": self.gamma}


def flat_pixels(labels, logits, sample_weight=None) -> tuple:
    """A batch as rows of pixels, in float32, with void masked out.

    labels (batch, h, w) or (batch, h, w, 1), void 255; logits (batch, h, w,
    classes) of any float dtype; sample_weight like labels, or None. Returns
    logits (batch, pixels, classes) float32; truth: one-hot labels of the same
    shape, all zero on void; valid (batch, pixels): 1 on non-void pixels, else
    0; pixel_weights (batch, pixels): sample_weight (or 1), 0 on void.
    """
    logits = ops.cast(logits, "float32")  # Mixed precision: no half-float sums.
    batch, num_classes = ops.shape(logits)[0], logits.shape[-1]
    logits = ops.reshape(logits, (batch, -1, num_classes))
    labels = ops.reshape(ops.cast(labels, "int32"), (batch, -1))
    is_valid = ops.not_equal(labels, IGNORE_LABEL)
    valid = ops.cast(is_valid, "float32")
    # 255 is past the last class: PyTorch's one_hot raises on it, so void
    # becomes class 0 and its row is zeroed.
    truth = ops.one_hot(ops.where(is_valid, labels, 0), num_classes)
    truth = truth * valid[..., None]
    pixel_weights = valid
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        pixel_weights = pixel_weights * ops.reshape(sample_weight, (batch, -1))
    return logits, truth, valid, pixel_weights


def cross_entropy(logits, truth, valid, pixel_weights) -> tuple:
    """Sum of weight x -log p(true class), and the non-void pixel count.

    Their ratio is `segmentation_loss()`'s value: Keras' sample weights scale
    each pixel's term, but the mean still divides by the pixels.
    """
    pixel_losses = -ops.sum(truth * ops.log_softmax(logits), axis=-1)
    return ops.sum(pixel_weights * pixel_losses), ops.sum(valid)


def focal(logits, truth, valid, pixel_weights, gamma: float = 2.0) -> tuple:
    """Focal loss, -(1 - p_t)^gamma log p_t (Lin et al. 2017, Sec. 3.2, Eq. 4).

    p_t is the softmax probability of the true class. Pixels the network
    already gets right (p_t near 1) are scaled down by (1 - p_t)^gamma, so the
    many easy background pixels stop outweighing the hard ones (borders, small
    objects). gamma = 2 is the paper's choice; gamma = 0 is cross-entropy.
    The paper's alpha balancing is a class weight, which --class-weighting
    supplies. Returns the sum and the non-void pixel count.
    """
    log_p = ops.sum(truth * ops.log_softmax(logits), axis=-1)
    # The floor keeps x^gamma's gradient finite at x = 0 (p_t = 1, void).
    modulation = ops.power(ops.maximum(1.0 - ops.exp(log_p), 1e-12), gamma)
    return ops.sum(pixel_weights * -modulation * log_p), ops.sum(valid)


def soft_dice(logits, truth, pixel_weights) -> tuple:
    """1 - the mean soft Dice 2 sum(p g) / sum(p + g) of the classes present.

    Dice (= 2 IoU / (1 + IoU)) with the softmax probabilities p in place of
    the predicted mask, summed over the whole batch: each class counts the
    same whatever its size, as in mean IoU. This is the linear form; V-Net
    (Milletari et al. 2016) squares p and g in the denominator.
    Pixel weights scale both sums. The mean is over the classes present in
    the batch's labels: an absent class's Dice is 0 / sum(p), a constant 1
    in the loss with no gradient, which would only dilute the others (and
    the usual +1 smoothing would make the loss depend on that constant). Its
    false positives still cost: they take probability from a present class.
    Returns (the loss, 1), or (0, 0) for a batch without non-void pixels.
    """
    weights = pixel_weights[..., None]
    probabilities = ops.softmax(logits) * weights  # 0 on void.
    intersection = ops.sum(probabilities * truth, axis=(0, 1))  # (classes,)
    sizes = ops.sum(probabilities + truth * weights, axis=(0, 1))
    present = ops.sum(truth * weights, axis=(0, 1)) > 0
    dice = ops.divide_no_nan(2.0 * intersection, sizes)
    return mean_over_present(1.0 - dice, present)


def lovasz_softmax(logits, truth, valid, per_image: bool) -> tuple:
    """Lovász-softmax (Berman, Rannen Triki & Blaschko, CVPR 2018).

    For each class c, the pixel errors m_i = |g_i - p_i(c)| go through the
    Lovász extension of the Jaccard loss 1 - IoU_c, the tight convex
    surrogate of a submodular set function ("Optimization surrogates for
    submodular loss functions", "Multiclass semantic segmentation"): sort the
    errors in decreasing order and weight each by how much 1 - IoU_c grows
    when its pixel joins the mispredicted set (`lovasz_gradient`, Alg. 1).
    On 0/1 probabilities it equals 1 - IoU_c, so training lowers what
    evaluation scores. The mean runs over the classes present in the labels,
    as in the authors' code ("present").

    per_image: the mean over images of each image's loss, aiming at the
    image-mIoU (images without a non-void pixel are left out; the authors'
    code counts them as 0); else the batch is one set, closer to the dataset
    mean IoU that VOC reports and these scripts score ("Image-mIoU vs.
    dataset-mIoU"; the authors' default). Pixel weights are ignored: the loss
    already gives every class the same share. Void pixels get error -1,
    below any real error, so they sort last and add 0.
    Returns (the sum over images, the images with a non-void pixel).
    """
    if not per_image:  # The batch as one image.
        logits = ops.reshape(logits, (1, -1, logits.shape[-1]))
        truth = ops.reshape(truth, (1, -1, truth.shape[-1]))
        valid = ops.reshape(valid, (1, -1))
    errors = ops.abs(truth - ops.softmax(logits))
    errors = ops.where(valid[..., None] > 0, errors, -1.0)
    errors = ops.transpose(errors, (0, 2, 1))  # (images, classes, pixels)
    # A full sort by top_k: static under JAX, and what XLA compiles best.
    errors_sorted, order = ops.top_k(errors, k=ops.shape(errors)[-1])
    truth_sorted = ops.take_along_axis(ops.transpose(truth, (0, 2, 1)), order, -1)
    valid_sorted = ops.cast(errors_sorted >= 0, "float32")
    gradient = lovasz_gradient(truth_sorted, valid_sorted)
    class_losses = ops.sum(errors_sorted * gradient, axis=-1)  # (images, classes)
    return mean_over_present(class_losses, ops.sum(truth, axis=1) > 0)


def lovasz_gradient(truth_sorted, valid_sorted):
    """Alg. 1 of Berman et al.: the Jaccard loss of the first k pixels, differenced.

    truth_sorted, valid_sorted: (..., pixels) 0/1, in order of decreasing
    error. Taking the first k pixels as mispredicted, the IoU of the class is
    (foreground left) / (foreground + background taken); entry k is how much
    1 - IoU grows with pixel k. Void pixels leave both counts alone: 0.
    """
    foreground = ops.sum(truth_sorted, axis=-1, keepdims=True)
    intersection = foreground - ops.cumsum(truth_sorted, axis=-1)
    union = foreground + ops.cumsum(valid_sorted - truth_sorted, axis=-1)
    jaccard_loss = 1.0 - ops.divide_no_nan(intersection, union)
    previous = ops.concatenate(
        [ops.zeros_like(jaccard_loss[..., :1]), jaccard_loss[..., :-1]], axis=-1
    )
    return jaccard_loss - previous


def mean_over_present(class_losses, present) -> tuple:
    """Per row (image), the mean of `class_losses` over its `present` classes.

    class_losses, present: (..., classes). Returns the sum of the row means
    and the number of rows with a present class (float32 scalars); a row
    without one gives 0 and is not counted.
    """
    present = ops.cast(present, "float32")
    classes = ops.sum(present, axis=-1)
    row_losses = ops.divide_no_nan(ops.sum(class_losses * present, axis=-1), classes)
    return ops.sum(row_losses), ops.sum(ops.cast(classes > 0, "float32"))


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
