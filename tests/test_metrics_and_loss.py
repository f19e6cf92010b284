"""Confusion-matrix metrics and the loss, against numbers worked out by hand,
on every Keras backend."""

import keras
import numpy as np
import pytest
from keras import ops

from common.losses import median_frequency_weights, segmentation_loss
from common.metrics import (
    COUNT_BASE,
    ConfusionMatrix,
    IoUReport,
    class_average_accuracy,
    iou_table,
    mean_iou,
    per_class_accuracy,
    per_class_iou,
    pixel_accuracy,
)

pytestmark = pytest.mark.backends

V = 255  # void
LABELS = np.array([[0, 0, 1, 1], [2, 2, V, V]])
PREDICTED = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
# Scored pixels (void skipped): gt 0 -> {0, 1}; gt 1 -> {1, 1}; gt 2 -> {2, 0}.
# Confusion matrix (rows = truth): [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
# IoU: class 0 = 1 / (2 + 2 - 1) = 1/3; class 1 = 2 / (2 + 3 - 2) = 2/3;
#      class 2 = 1 / (2 + 1 - 1) = 1/2; mean = 1/2. Pixel accuracy = 4/6.
EXPECTED_MATRIX = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def one_hot_logits(predicted, num_classes):
    return np.eye(num_classes, dtype="float32")[predicted] * 5.0


def test_confusion_matrix_metric_matches_hand_count():
    metric = ConfusionMatrix(num_classes=3)
    # Two half-batches: the metric must accumulate across updates.
    metric.update_state(LABELS[:1], one_hot_logits(PREDICTED[:1], 3))
    metric.update_state(LABELS[1:], one_hot_logits(PREDICTED[1:], 3))
    matrix = metric.matrix

    np.testing.assert_array_equal(matrix, EXPECTED_MATRIX)
    assert matrix.dtype == np.int64
    np.testing.assert_allclose(per_class_iou(matrix), [1 / 3, 2 / 3, 1 / 2])
    assert float(metric.result()) == pytest.approx(0.5)
    assert float(pixel_accuracy(matrix)) == pytest.approx(4 / 6)


def test_sample_weights_do_not_change_the_counts():
    metric = ConfusionMatrix(num_classes=3)
    weights = np.full(LABELS.shape, 7.5, np.float32)
    metric.update_state(LABELS, one_hot_logits(PREDICTED, 3), sample_weight=weights)
    np.testing.assert_array_equal(metric.matrix, EXPECTED_MATRIX)


def test_counts_stay_exact_past_2_to_the_31():
    """An int32 count wraps at 2**31 pixels (VOC val passes it in one epoch):
    start each cell near a carry of the low part and near 2**31, add a batch."""
    start = np.array(
        [[COUNT_BASE - 1, 2**31 - 1, 0], [2**31 + 5, 2**40, 7], [0, 0, 2**50 - 1]]
    )
    metric = ConfusionMatrix(num_classes=3)
    metric.set_matrix(start)
    np.testing.assert_array_equal(metric.matrix, start)
    for _ in range(3):
        metric.update_state(LABELS, one_hot_logits(PREDICTED, 3))
    np.testing.assert_array_equal(metric.matrix, start + 3 * np.array(EXPECTED_MATRIX))
    # The parts stay in int32 range: low below COUNT_BASE.
    low = ops.convert_to_numpy(metric.low)
    assert low.dtype == np.int32 and 0 <= low.min() and low.max() < COUNT_BASE
    metric.reset_state()
    np.testing.assert_array_equal(metric.matrix, np.zeros((3, 3)))


def test_result_is_the_mean_iou_of_the_matrix_also_past_float32_exactness():
    metric = ConfusionMatrix(num_classes=3)
    matrix = np.array([[3 * 2**33, 2**25, 0], [2**24 + 1, 2**34, 0], [0, 0, 0]])
    metric.set_matrix(matrix)
    assert float(metric.result()) == pytest.approx(float(mean_iou(matrix)), rel=1e-6)
    # On numpy, the scores are float64 numpy on every backend.
    assert isinstance(per_class_iou(matrix), np.ndarray)
    assert per_class_iou(matrix)[1] == 2**34 / (2**34 + 2**24 + 1 + 2**25)


def test_metric_counts_in_a_compiled_fit_and_evaluate():
    """Under JAX, fit and evaluate jit the step: update_state, result and
    reset_state must compile, with static shapes."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 6, 6))
    masks[:, 0] = V
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(3, 1)])
    metric = ConfusionMatrix(num_classes=3)
    model.compile("adam", segmentation_loss(), metrics=[metric], jit_compile=True)
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert metric.matrix.sum() == np.sum(masks != V)  # Both steps, void left out.
    assert history.history["mean_iou"][0] == pytest.approx(
        float(mean_iou(metric.matrix)), rel=1e-6
    )
    scores = model.evaluate(images, masks, batch_size=2, verbose=0, return_dict=True)
    predicted = np.argmax(model.predict(images, verbose=0), axis=-1)
    scored = masks != V
    expected = np.zeros((3, 3), np.int64)
    np.add.at(expected, (masks[scored], predicted[scored]), 1)
    np.testing.assert_array_equal(metric.matrix, expected)
    assert scores["mean_iou"] == pytest.approx(float(mean_iou(expected)), rel=1e-6)


def test_scores_of_an_all_void_matrix_are_nan_without_warnings():
    with np.errstate(all="raise"):
        assert np.isnan(mean_iou(np.zeros((2, 2))))
        assert np.isnan(class_average_accuracy(np.zeros((2, 2))))
    assert np.isnan(float(mean_iou(ops.zeros((2, 2)))))


def test_absent_class_is_left_out_of_the_mean():
    matrix = np.array([[3, 0, 1], [0, 0, 0], [1, 0, 2]])  # class 1 never seen
    assert np.isnan(per_class_iou(matrix)[1])
    assert float(mean_iou(matrix)) == pytest.approx((3 / 5 + 2 / 4) / 2)
    table = iou_table(matrix, ["background", "cat", "dog"])
    assert "cat" in table and "mean IoU" in table


def test_segnet_s_accuracies_differ_from_mean_iou_as_worked_out_by_hand():
    matrix = np.array([[6, 2, 0], [1, 3, 0], [0, 2, 2]])  # rows = truth
    # Recall (row): 6/8, 3/4, 2/4 -> class-average accuracy 2/3.
    # Global accuracy: diagonal 11 of 16 pixels.
    # IoU: 6/(8+7-6), 3/(4+7-3), 2/(4+2-2) -> mean (2/3 + 3/8 + 1/2) / 3.
    np.testing.assert_allclose(per_class_accuracy(matrix), [3 / 4, 3 / 4, 1 / 2])
    assert float(class_average_accuracy(matrix)) == pytest.approx(2 / 3)
    assert float(pixel_accuracy(matrix)) == pytest.approx(11 / 16)
    assert float(mean_iou(matrix)) == pytest.approx((2 / 3 + 3 / 8 + 1 / 2) / 3)
    table = iou_table(matrix, ["road", "car", "sign"])
    assert "global accuracy 68.8%" in table
    assert "class-average accuracy 66.7%" in table
    assert table.splitlines()[2].split()[:3] == ["car", "37.5%", "75.0%"]


def test_a_class_absent_from_the_labels_is_left_out_of_class_average_accuracy():
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])  # class 1 only predicted
    assert np.isnan(per_class_accuracy(matrix)[1])
    assert float(class_average_accuracy(matrix)) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert float(per_class_iou(matrix)[1]) == 0.0  # But it costs mean IoU.
    assert iou_table(matrix, ["a", "b", "c"]).splitlines()[2].split() == [
        "b", "0.0%", "-", "0"
    ]  # fmt: skip


def test_iou_report_logs_both_accuracies_for_history_csv():
    metric = ConfusionMatrix(num_classes=3)
    metric.update_state(LABELS, one_hot_logits(PREDICTED, 3))
    logs = {"val_mean_iou": 0.5}
    IoUReport(metric, ["a", "b", "c"]).on_epoch_end(0, logs)
    # Recall of EXPECTED_MATRIX's rows: 1/2, 2/2, 1/2.
    assert logs["val_pixel_accuracy"] == pytest.approx(4 / 6)
    assert logs["val_class_average_accuracy"] == pytest.approx(2 / 3)


def test_loss_is_cross_entropy_averaged_over_non_void_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 3)).astype(np.float32)[None].reshape(1, 2, 4, 3)
    labels = LABELS[None]
    loss = float(segmentation_loss()(labels, logits))

    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    scored = labels != V
    expected = -np.mean(
        np.take_along_axis(log_probs, np.where(scored, labels, 0)[..., None], -1)[
            ..., 0
        ][scored]
    )
    assert loss == pytest.approx(expected, rel=1e-5)


def test_median_frequency_weights_by_hand():
    # freq = pixels / pixels of images containing the class: 0.5, 0.1, 0.25.
    weights = median_frequency_weights([50, 10, 25, 0], [100, 100, 100, 0])
    np.testing.assert_allclose(weights, [0.5, 2.5, 1.0, 0.0], rtol=1e-6)
