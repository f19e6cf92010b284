"""FCN-32s/16s/8s (fcn_train.py): paper counts, convolutionalization, alignment."""

from __future__ import annotations

import argparse
import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import fcn_train
from common import training
from common.errors import InputError
from common.layers import VGG_MEAN_BGR, MatmulConv2D
from fcn_train import build_fcn

TINY = 1 / 16  # Channels 4 ... 32, fc6/fc7 256: seconds on a CPU.


def random_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(batch, height, width, 3)).astype("float32")


def randomize_scores(model: keras.Model, seed: int = 0) -> None:
    """Give the zero-initialised score layers weights, so logits are not all 0."""
    rng = np.random.default_rng(seed)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        if name in [layer.name for layer in model.layers]:
            layer = model.get_layer(name)
            layer.set_weights(
                [rng.normal(size=w.shape).astype("float32") for w in layer.weights]
            )


# --------------------------------------------------------------------------
# The paper's network
# --------------------------------------------------------------------------


@pytest.mark.backends
@pytest.mark.parametrize(
    "variant, expected", [("16s", 134_815_994), ("32s", 136_152_917)]
)
def test_paper_parameter_counts(variant, expected):
    """Table 1: FCN-VGG16 has 134M parameters (upsampling layers bias-free)."""
    model = build_fcn(21, variant)
    assert model.count_params() == expected
    del model
    keras.backend.clear_session()


def test_vgg16_weights_from_path_convolutionalize_fc1_fc2(tmp_path):
    """Also pins FCN-8s' 134,489,759 parameters, building the full net only once.

    On a 224x224 image pool5 is 7x7, so fc6's centre output sees exactly what
    VGG-16's fc1 saw: the FCN's fc7 there equals VGG-16's fc2 output. This
    also checks that the in-model preprocessing is `vgg16.preprocess_input`.
    """
    vgg = keras.applications.VGG16(weights=None, include_top=True)
    path = str(tmp_path / "vgg16.weights.h5")
    vgg.save_weights(path)
    model = build_fcn(21, "8s", backbone_weights=path)
    assert model.count_params() == 134_489_759

    image = random_images(1, 224, 224)
    fc2 = keras.Model(vgg.input, vgg.get_layer("fc2").output)
    expected = fc2.predict(keras.applications.vgg16.preprocess_input(image.copy()))
    fc7 = keras.Model(model.input, model.get_layer("fc7").output)
    got = fc7.predict(image, verbose=0)[:, 3, 3]
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())
    del vgg, model, fc2, fc7
    keras.backend.clear_session()


def test_offline_imagenet_download_names_the_way_out(monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(InputError, match="--backbone-weights none"):
        build_fcn(21, "8s", backbone_weights="imagenet")
    keras.backend.clear_session()


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, score_layer, stride",
    [
        ("32s", "score_fr", 32),
        ("16s", "score_pool4", 16),
        ("8s", "score_pool4", 16),
        ("8s", "score_pool3", 8),
    ],
)
def test_impulse_in_score_map_lands_on_its_pixels(variant, score_layer, stride):
    """A one-hot score at cell (i, j) of a stride-s map lands on the cell's pixels.

    Cell (i, j) covers pixels [s*i, s*(i+1)), centred on s*i + (s-1)/2, and
    everything after the score layers is linear, so the change in the logits
    is the impulse response. It is symmetric about its centre of mass, which
    must be that pixel (its maximum can be a plateau: in FCN-8s two x2 and x8
    bilinear steps spread a pool4 impulse over 8 pixels). The image (120x100)
    is not a multiple of 32, so this also checks that the in-model padding and
    crop keep the grids where they were.
    """
    model = build_fcn(6, variant, width=TINY)
    scores = model.get_layer(score_layer).output
    probe = keras.Model([model.input, scores], model.output)
    image = random_images(1, 120, 100)
    grid = (128 // stride, 128 // stride)  # The image is padded to 128x128 inside.
    # The cell nearest the image centre, so that the response is not cropped.
    cell, channel = (60 // stride, 50 // stride), 4
    impulse = np.zeros((1, *grid, 6), "float32")
    impulse[0, cell[0], cell[1], channel] = 1.0
    response = (
        probe.predict([image, impulse], verbose=0)
        - probe.predict([image, np.zeros_like(impulse)], verbose=0)
    )[0, :, :, channel]
    assert response.shape == (120, 100)
    assert response.min() >= -1e-6  # Bilinear weights are never negative.
    rows, columns = np.indices(response.shape)
    landed = np.array([(rows * response).sum(), (columns * response).sum()])
    landed /= response.sum()
    expected = np.array(cell) * stride + (stride - 1) / 2
    assert np.abs(landed - expected).max() < 0.5, (landed, expected)
    keras.backend.clear_session()


def test_padding_inside_the_model_keeps_pixels_in_place():
    """Logits of an image = the top-left of the logits of it mean-padded bottom/right.

    The model pads to a multiple of 32 itself, as the evaluation pipeline does
    before it: both must leave pixel (0, 0) where it was, or the probe above
    would be aligned with the padded frame and not with the image.
    """
    model = build_fcn(6, "8s", width=TINY)
    randomize_scores(model)
    image = random_images(1, 120, 100)
    mean_rgb = np.array(VGG_MEAN_BGR[::-1], "float32")
    padded = np.broadcast_to(mean_rgb, (1, 128, 128, 3)).copy()
    padded[:, :120, :100] = image
    logits = model.predict(image, verbose=0)
    expected = model.predict(padded, verbose=0)[:, :120, :100]
    assert np.abs(logits).max() > 0
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    keras.backend.clear_session()


@pytest.mark.parametrize("variant", fcn_train.VARIANTS)
def test_output_size_equals_input_size(variant):
    model = build_fcn(5, variant, width=TINY)
    for height, width in [(375, 500), (97, 130), (33, 65), (64, 64)]:
        logits = model.predict(random_images(1, height, width), verbose=0)
        assert logits.shape == (1, height, width, 5)
        assert logits.dtype == np.float32
    keras.backend.clear_session()


# --------------------------------------------------------------------------
# Saving and staged training
# --------------------------------------------------------------------------


def test_saved_model_reloads_with_identical_logits(tmp_path):
    model = build_fcn(6, "8s", width=TINY)
    randomize_scores(model)
    path = str(tmp_path / "fcn8s.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    images = random_images(2, 70, 90)
    logits = model.predict(images, verbose=0)
    assert np.abs(logits).max() > 0
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), logits)
    keras.backend.clear_session()


def test_init_from_copies_the_coarser_net_and_keeps_new_layers(tmp_path):
    """Sec. 4.2: FCN-16s starts from FCN-32s, its pool4 scores at zero."""
    coarse = build_fcn(6, "32s", width=TINY)
    randomize_scores(coarse)
    path = str(tmp_path / "fcn32s.keras")
    coarse.save(path)
    fine = build_fcn(6, "16s", width=TINY)
    bilinear = fine.get_layer("upscore2").get_weights()[0]
    args = argparse.Namespace(init_from=path, output_dir=str(tmp_path / "run"))
    copied = training.init_from(fine, args)  # --init-from

    assert {"block1_conv1", "block5_conv3", "fc6", "fc7", "score_fr"} <= set(copied)
    for name in ("block3_conv2", "fc6", "score_fr"):
        for got, expected in zip(
            fine.get_layer(name).get_weights(), coarse.get_layer(name).get_weights()
        ):
            np.testing.assert_array_equal(got, expected)
    assert not np.any(fine.get_layer("score_pool4").get_weights()[0])
    np.testing.assert_array_equal(fine.get_layer("upscore2").get_weights()[0], bilinear)
    keras.backend.clear_session()


def test_freeze_upsampling():
    model = build_fcn(6, "8s", width=TINY, freeze_upsampling=True)
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert not model.get_layer(name).trainable
    assert model.get_layer("score_pool3").trainable
    keras.backend.clear_session()


# --------------------------------------------------------------------------
# The script, end to end
# --------------------------------------------------------------------------


def test_main_trains_on_tiny_data(shapes_dir, tmp_path):
    output_dir = str(tmp_path / "run")
    results = fcn_train.main(
        [
            "--dataset", "folder", "--data-dir", shapes_dir, "--num-classes", "6",
            "--variant", "8s", "--backbone-weights", "none", "--width", str(TINY),
            "--crop-size", "64", "--batch-size", "4", "--epochs", "2",
            "--steps-per-epoch", "3", "--val-steps", "1", "--num-predictions", "1",
            # Adam: the paper's SGD at 1e-4 would barely move in six steps.
            "--optimizer", "adam", "--learning-rate", "1e-3",
            "--output-dir", output_dir,
        ]
    )  # fmt: skip
    with open(os.path.join(output_dir, "results.json")) as f:
        written = json.load(f)
    assert written["mean_iou"] == pytest.approx(results["mean_iou"])
    assert len(written["per_class_iou"]) == 6
    assert os.path.isfile(os.path.join(output_dir, "best.keras"))
    with open(os.path.join(output_dir, "history.csv")) as f:
        history = list(csv.DictReader(f))
    losses = [float(row["loss"]) for row in history]
    best_epoch = max(float(row["val_mean_iou"]) for row in history)
    assert written["mean_iou"] == pytest.approx(best_epoch, abs=1e-6)
    assert len(losses) == 2
    assert losses[1] < losses[0]
    keras.backend.clear_session()


def test_defaults_follow_the_paper_and_help_explains_memory(capsys):
    args = fcn_train.parse_args([])
    assert (args.optimizer, args.momentum, args.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (args.learning_rate, args.batch_size) == (1e-4, 20)
    assert args.variant == "8s" and args.backbone_weights == "imagenet"
    assert fcn_train.parse_args(["--backbone-weights", "none"]).backbone_weights is None
    with pytest.raises(SystemExit):
        fcn_train.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "102.8M" in help_text and "--mixed-precision" in help_text


@pytest.mark.parametrize(
    "shape, kernel_size", [((4, 4), 7), ((3, 5), 7), ((10, 10), 1), ((6, 6), 3)]
)
def test_matmul_conv_equals_conv2d(shape, kernel_size):
    """fc6/fc7's CPU path: Conv2D's outputs and gradients, on maps of any size."""
    images = tf.random.stateless_normal((2, *shape, 8), seed=(1, 2))
    conv = keras.layers.Conv2D(16, kernel_size, padding="same", activation="relu")
    product = MatmulConv2D(16, kernel_size, padding="same", activation="relu")
    conv.build(images.shape)
    product.build(images.shape)
    product.set_weights(conv.get_weights())
    assert product._product_is_faster(images)  # On CPU: the matrix product.
    results = []
    for layer in (conv, product):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images)
            loss = tf.reduce_sum(outputs**2)
        results.append([outputs, *tape.gradient(loss, [images, *layer.weights])])
    for expected, actual in zip(*results):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_fc6_fc7_compute_the_plain_convolutions():
    """The whole FCN-8s with MatmulConv2D gives the logits of plain Conv2D layers."""
    model = build_fcn(3, "8s", width=TINY)
    randomize_scores(model)
    assert isinstance(model.get_layer("fc6"), MatmulConv2D)
    assert isinstance(model.get_layer("fc7"), MatmulConv2D)
    config = model.get_config()
    for layer in config["layers"]:
        if layer["name"] in ("fc6", "fc7"):
            layer["class_name"], layer["module"] = "Conv2D", "keras.layers"
            layer.pop("registered_name", None)
    plain = keras.Model.from_config(config)
    plain.set_weights(model.get_weights())
    assert type(plain.get_layer("fc6")) is keras.layers.Conv2D
    images = random_images(2, 70, 90)
    logits = model.predict(images, verbose=0)
    assert np.abs(logits).max() > 0
    np.testing.assert_allclose(
        plain.predict(images, verbose=0), logits, rtol=1e-4, atol=1e-4
    )
