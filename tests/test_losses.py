"""common/losses.py and --loss: values by hand and by definition, void, dtypes,
tf.distribute, the multi-worker loop, and a tiny training run.

Tests marked `backends` also run with KERAS_BACKEND=jax; the others need
TensorFlow itself (tf.distribute, the tf.data pipeline)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

import unet_train
from common import backend, cli
from common.backend import tf
from common.losses import (
    LOSS_TERMS,
    SegmentationLoss,
    make_loss,
    segmentation_loss,
)
from common.metrics import ConfusionMatrix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVERY_LOSS = [{term: 1.0} for term in LOSS_TERMS] + [{"ce": 0.5, "lovasz": 1.0}]


def random_batch(seed=0, shape=(2, 5, 6), num_classes=3):
    """Logits, labels with a void strip, and per-pixel weights (0 on void)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (*shape, num_classes)).astype("float32")
    labels = rng.integers(0, num_classes, shape)
    labels[:, 0, :2] = 255
    weights = np.where(labels == 255, 0, rng.uniform(0.5, 3, shape)).astype("float32")
    return logits, labels, weights


def value(terms, labels, logits, weights=None) -> float:
    return float(SegmentationLoss(terms)(labels, logits, sample_weight=weights))


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def loss_and_gradient(loss_fn, logits):
    """loss_fn(logits) and its gradient with respect to logits, as numpy."""
    if backend.name() == "jax":
        import jax

        loss, gradient = jax.value_and_grad(loss_fn)(ops.convert_to_tensor(logits))
        return float(loss), np.asarray(gradient)
    if backend.name() != "tensorflow":
        pytest.skip(f"no gradient helper for {backend.name()}")
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = loss_fn(logits)
    return float(loss), tape.gradient(loss, logits).numpy()


# Each term on `reference_batch()`, computed with the TensorFlow code of
# common/losses.py before it moved to keras.ops (weights None, then weights).
TF_REFERENCE = {
    None: {
        "ce": 2.3244059085845947,
        "focal": 1.9905372858047485,
        "dice": 0.7401115894317627,
        "lovasz": 0.7899256944656372,
        "lovasz_image": 0.7965440154075623,
    },
    "weights": {
        "ce": 4.053229808807373,
        "focal": 3.490436553955078,
        "dice": 0.7388279438018799,
        "lovasz": 0.7899256944656372,
        "lovasz_image": 0.7965440154075623,
    },
}


def reference_batch():
    rng = np.random.default_rng(37)
    logits = rng.normal(0, 2, (2, 5, 6, 4)).astype("float32")
    labels = rng.integers(0, 4, (2, 5, 6))
    labels[:, 0, :3] = 255
    labels[1, 4] = 255
    weights = np.where(labels == 255, 0, rng.uniform(0.5, 3, labels.shape))
    return logits, labels, weights.astype("float32")


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


@pytest.mark.backends
@pytest.mark.parametrize("weighted", [None, "weights"])
def test_every_term_equals_the_tensorflow_reference(weighted):
    logits, labels, weights = reference_batch()
    weights = weights if weighted else None
    for term, expected in TF_REFERENCE[weighted].items():
        assert value({term: 1.0}, labels, logits, weights) == pytest.approx(
            expected, rel=1e-6
        ), term
    # Keras' own loss (the default --loss ce) ignores void on this backend too.
    loss = float(segmentation_loss()(labels, logits, weights))
    assert loss == pytest.approx(TF_REFERENCE[weighted]["ce"], rel=1e-6)


@pytest.mark.backends
def test_void_never_reaches_one_hot(monkeypatch):
    """PyTorch's one_hot raises on 255; every backend sees only real classes."""
    one_hot, calls = ops.one_hot, []

    def in_range_one_hot(labels, num_classes, **kwargs):
        calls.append(np.max(ops.convert_to_numpy(labels)))
        assert calls[-1] < num_classes
        return one_hot(labels, num_classes, **kwargs)

    monkeypatch.setattr(ops, "one_hot", in_range_one_hot)
    logits, labels, weights = reference_batch()
    assert value({"ce": 1.0}, labels, logits, weights) == pytest.approx(
        TF_REFERENCE["weights"]["ce"], rel=1e-6
    )
    assert calls  # The loss did go through ops.one_hot.


@pytest.mark.backends
def test_cross_entropy_is_todays_loss():
    logits, labels, weights = random_batch()
    for pixel_weights in (None, weights):
        expected = float(segmentation_loss()(labels, logits, pixel_weights))
        assert value({"ce": 1.0}, labels, logits, pixel_weights) == pytest.approx(
            expected, rel=1e-6
        )
    # The default --loss stays Keras' own loss, saved config included.
    default = make_loss(cli.loss_terms("ce"))
    assert isinstance(default, keras.losses.SparseCategoricalCrossentropy)
    assert default.get_config() == segmentation_loss().get_config()


@pytest.mark.backends
def test_soft_dice_by_hand():
    # A 2x2 image, 2 classes; the bottom-right pixel is void.
    labels = np.array([[[0, 1], [1, 255]]])
    class1 = np.array([[[0.2, 0.6], [0.9, 0.5]]])
    logits = np.log(np.stack([1 - class1, class1], axis=-1)).astype("float32")
    # Class 0: p = 0.8, 0.4, 0.1 on the 3 non-void pixels, truth 1, 0, 0:
    #   2 * 0.8 / (1.3 + 1) = 0.6956522.
    # Class 1: p = 0.2, 0.6, 0.9, truth 0, 1, 1: 2 * 1.5 / (1.7 + 2) = 0.8108108.
    expected = 1 - (1.6 / 2.3 + 3.0 / 3.7) / 2
    assert value({"dice": 1.0}, labels, logits) == pytest.approx(expected, rel=1e-6)
    # Weights scale both sums: doubling the weight of the top-left pixel.
    weights = np.array([[[2.0, 1.0], [1.0, 0.0]]])
    expected = 1 - (2 * 1.6 / (2.1 + 2) + 2 * 1.5 / (1.9 + 2)) / 2
    assert value({"dice": 1.0}, labels, logits, weights) == pytest.approx(
        expected, rel=1e-6
    )


@pytest.mark.backends
def test_focal_by_hand_and_as_cross_entropy_at_gamma_0():
    logits, labels, weights = random_batch()
    focal_0 = SegmentationLoss({"focal": 1.0}, gamma=0.0)
    assert float(focal_0(labels, logits, weights)) == pytest.approx(
        value({"ce": 1.0}, labels, logits, weights), rel=1e-6
    )
    # One pixel with p_t = 0.9: -(0.1)^2 log 0.9.
    logits = np.log([[[[0.9, 0.1]]]]).astype("float32")
    assert value({"focal": 1.0}, [[[0]]], logits) == pytest.approx(
        -(0.1**2) * np.log(0.9), rel=1e-5
    )


def lovasz_by_definition(probabilities, labels) -> float:
    """The Lovász extension of 1 - IoU, from the set function itself.

    probabilities (pixels, classes), labels (pixels,), void already removed.
    Mean over the present classes of sum_k m_(k) (D(first k) - D(first k-1)),
    errors m in decreasing order, D(M) = |M| / |foreground | M|, D({}) = 0.
    """
    losses = []
    for c in range(probabilities.shape[1]):
        foreground = set(np.flatnonzero(labels == c))
        if not foreground:
            continue
        errors = np.abs((labels == c) - probabilities[:, c])
        order = np.argsort(-errors, kind="stable")
        total, previous = 0.0, 0.0
        for k in range(1, len(order) + 1):
            mispredicted = set(order[:k])
            current = len(mispredicted) / len(foreground | mispredicted)
            total += errors[order[k - 1]] * (current - previous)
            previous = current
        losses.append(total)
    return float(np.mean(losses))


@pytest.mark.backends
def test_lovasz_matches_its_definition_per_batch_and_per_image():
    logits, labels, _ = random_batch(seed=1, shape=(3, 4, 5), num_classes=4)
    labels[2] = np.where(labels[2] == 3, 1, labels[2])  # Image 3 lacks class 3.
    probabilities = softmax(logits)
    valid = labels != 255
    batch = lovasz_by_definition(probabilities[valid], labels[valid])
    images = np.mean(
        [
            lovasz_by_definition(probabilities[i][valid[i]], labels[i][valid[i]])
            for i in range(3)
        ]
    )
    assert value({"lovasz": 1.0}, labels, logits) == pytest.approx(batch, rel=1e-5)
    assert value({"lovasz_image": 1.0}, labels, logits) == pytest.approx(
        images, rel=1e-5
    )
    assert batch != pytest.approx(images, rel=1e-3)  # The variants differ.


@pytest.mark.backends
def test_lovasz_of_hard_predictions_is_one_minus_mean_iou():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (1, 6, 6))
    predicted = np.where(rng.uniform(size=labels.shape) < 0.7, labels, 2 - labels)
    logits = 40.0 * np.eye(3, dtype="float32")[predicted]  # Probabilities 0 or 1.
    truth, hits = np.eye(3)[labels], np.eye(3)[predicted]
    ious = np.sum(truth * hits, (0, 1, 2)) / np.sum(np.maximum(truth, hits), (0, 1, 2))
    assert value({"lovasz": 1.0}, labels, logits) == pytest.approx(
        1 - np.mean(ious), abs=1e-5
    )


@pytest.mark.backends
def test_weighted_sum_is_the_sum_of_its_parts():
    logits, labels, weights = random_batch()
    parts = {term: value({term: 1.0}, labels, logits, weights) for term in LOSS_TERMS}
    terms = {"ce": 0.5, "focal": 2.0, "dice": 1.0, "lovasz": 0.3, "lovasz_image": 1.5}
    expected = sum(weight * parts[term] for term, weight in terms.items())
    assert value(terms, labels, logits, weights) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------
# Void pixels, empty batches, dtypes, saving
# --------------------------------------------------------------------------


@pytest.mark.backends
@pytest.mark.parametrize("terms", EVERY_LOSS, ids=str)
def test_void_pixels_change_nothing(terms):
    """A void border, with wild logits and weights, and an all-void image."""
    logits, labels, weights = random_batch()
    rng = np.random.default_rng(3)
    padded_logits = rng.normal(0, 50, (3, 9, 10, 3)).astype("float32")
    padded_labels = np.full((3, 9, 10), 255)
    padded_weights = rng.uniform(0, 9, (3, 9, 10)).astype("float32")
    padded_logits[:2, 2:7, 1:7] = logits
    padded_labels[:2, 2:7, 1:7] = labels
    padded_weights[:2, 2:7, 1:7] = weights
    assert value(terms, padded_labels, padded_logits, padded_weights) == (
        pytest.approx(value(terms, labels, logits, weights), rel=1e-5)
    )


@pytest.mark.backends
@pytest.mark.parametrize("terms", EVERY_LOSS, ids=str)
def test_all_void_batch_gives_zero_and_zero_gradients(terms):
    logits = np.random.default_rng(4).normal(0, 9, (2, 4, 4, 3)).astype("float32")
    labels = np.full((2, 4, 4), 255)
    loss, gradients = loss_and_gradient(
        lambda x: SegmentationLoss(terms)(labels, x, np.ones((2, 4, 4))), logits
    )
    assert loss == 0.0
    assert np.all(np.isfinite(gradients)) and not np.any(gradients)


@pytest.mark.backends
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_logits_give_a_float32_loss(dtype):
    logits, labels, weights = random_batch()
    terms = {term: 1.0 for term in LOSS_TERMS}
    half = ops.cast(logits, dtype)
    loss = SegmentationLoss(terms)(labels, half, weights)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    rounded = value(
        terms, labels, ops.convert_to_numpy(ops.cast(half, "float32")), weights
    )
    assert float(loss) == pytest.approx(rounded, rel=1e-6)


@pytest.mark.backends
def test_config_survives_saving_a_compiled_model(tmp_path):
    loss = SegmentationLoss({"ce": 0.5, "focal": 1.0}, gamma=1.5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.get_config() == loss.get_config()
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(optimizer="sgd", loss=loss)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, SegmentationLoss)
    assert loaded.loss.get_config() == loss.get_config()


# --------------------------------------------------------------------------
# The flag
# --------------------------------------------------------------------------


def test_loss_flag_parses_sums():
    assert unet_train.parse_args([]).loss == {"ce": 1.0}
    args = unet_train.parse_args(["--loss", "0.5*ce+lovasz"])
    assert args.loss == {"ce": 0.5, "lovasz": 1.0}
    assert make_loss(args.loss).get_config()["terms"] == args.loss


@pytest.mark.parametrize(
    "text, message",
    [
        ("lovaz", "'lovaz' is not a loss term"),
        ("ce+", "'' is not a loss term"),
        ("ce+ce", "'ce' appears twice"),
        ("0*ce", "must be a weight > 0, not '0'"),
    ],
)
def test_bad_loss_flag_is_one_line(text, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        unet_train.parse_args(["--loss", text])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --loss: {message}" in error and error.count("\n") == 1


# --------------------------------------------------------------------------
# tf.distribute and the multi-worker loop
# --------------------------------------------------------------------------

# Runs in a fresh process: logical devices must be set before TensorFlow starts.
TWO_REPLICAS = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from common import multiworker
    from common.losses import SegmentationLoss

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 8, 8)).astype("int32")
    masks[0, :5] = 255  # Replica 1 (images 0-1) has fewer non-void pixels,
    masks[1] = 255  # and one image without any.
    weights = np.where(masks == 255, 0, rng.uniform(0.5, 2, masks.shape))
    data = tf.data.Dataset.from_tensors((images, masks, weights.astype("float32")))
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def compiled(terms):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((None, None, 3)), keras.layers.Conv2D(3, 3, padding="same")])
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=SegmentationLoss(terms))
        return model

    def replica_loss(model, batch):
        images, masks, weights = batch
        return model.loss(masks, model(images), weights)

    results = {}
    # Terms that split into per-pixel (per-image) sums, and those that do not.
    for name, terms in [("sums", {"ce": 1.0, "focal": 0.5, "lovasz_image": 1.0}),
                        ("means", {"dice": 1.0, "lovasz": 0.5})]:
        one = compiled(terms)
        logits = one(images)
        halves = [float(one.loss(masks[i:i + 2], logits[i:i + 2], weights[i:i + 2]))
                  for i in (0, 2)]
        whole = one.fit(data, epochs=1, verbose=0).history["loss"][0]
        with mirrored.scope():
            fit_model, loop_model = compiled(terms), compiled(terms)
        batch = next(iter(mirrored.experimental_distribute_dataset(data)))
        per_replica = tf.function(lambda b: mirrored.run(
            replica_loss, args=(fit_model, b)))(batch)
        fit_sum = float(mirrored.reduce("SUM", per_replica, axis=None))
        train_step, _ = multiworker.make_step_functions(loop_model, 3)
        loop_loss, _ = train_step(iter(mirrored.experimental_distribute_dataset(data)))
        weight_gap = max(float(np.max(np.abs(a - b)))
                         for a, b in zip(loop_model.get_weights(), one.get_weights()))
        results[name] = dict(halves=halves, whole=whole, fit_sum=fit_sum,
                             loop=float(loop_loss), weight_gap=weight_gap)
    print(json.dumps(results))
    """
)


def test_two_replicas_average_each_loss_and_the_loop_matches_one_device():
    """Keras' fit path: each replica's loss is its batch's mean over 2 (summed
    by apply_gradients). The loop: ce, focal and lovasz_image equal one device
    on the global batch even with unequal void per replica; dice and lovasz
    average the replicas' values."""
    process = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])
    sums, means = results["sums"], results["means"]
    for result in (sums, means):
        mean_of_halves = np.mean(result["halves"])
        assert result["fit_sum"] == pytest.approx(mean_of_halves, rel=1e-5)
    assert sums["loop"] == pytest.approx(sums["whole"], rel=1e-5)
    assert sums["weight_gap"] < 1e-5
    assert sums["whole"] != pytest.approx(np.mean(sums["halves"]), rel=1e-3)
    assert means["loop"] == pytest.approx(np.mean(means["halves"]), rel=1e-5)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


@pytest.mark.backends
def test_fit_compiles_every_term_with_xla():
    """Keras turns XLA on for one GPU, and JAX always jits: the sort and
    gathers must compile, beside the confusion-matrix metric (2 steps)."""
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1)])
    metric = ConfusionMatrix(num_classes=3)
    model.compile(
        optimizer="adam",
        loss=SegmentationLoss({term: 1.0 for term in LOSS_TERMS}),
        metrics=[metric],
        jit_compile=True,
    )
    logits, labels, weights = random_batch(shape=(2, 8, 8))
    history = model.fit(
        logits, labels, sample_weight=weights, batch_size=1, epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])
    assert metric.matrix.sum() == np.sum(labels != 255)


def test_unet_trains_with_ce_plus_lovasz(shapes_dir, tmp_path):
    argv = [
        *("--dataset", "shapes", "--data-dir", shapes_dir),
        *("--output-dir", str(tmp_path), "--loss", "ce+lovasz"),
        *("--filters", "8", "16", "--crop-size", "32", "--batch-size", "4"),
        *("--epochs", "3", "--steps-per-epoch", "5", "--learning-rate", "0.01"),
        *("--val-steps", "1", "--num-predictions", "1"),
    ]
    results = unet_train.main(argv)
    with open(tmp_path / "history.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert results["settings"]["loss"] == {"ce": 1.0, "lovasz": 1.0}
    assert results["training"]["loss"]["class"] == "SegmentationLoss"
