"""segnet_train.py: the architecture against the paper, and tiny end-to-end runs."""

from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import segnet_train
from common import cli, training, voc
from common.errors import InputError
from common.layers import MaxUnpooling2D
from common.losses import median_frequency_weights
from segnet_train import build_segnet

CAMVID_CLASSES = 11
CAMVID_VOID = 11  # As conftest's camvid_dir writes them.


def trainable_parameters(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


@pytest.fixture(scope="module")
def segnet_vgg16() -> keras.Model:
    return build_segnet(12)


@pytest.mark.backends
def test_segnet_vgg16_parameter_count(segnet_vgg16):
    # Encoder, VGG-16's 13 3x3 convolutions, no biases (batch norm follows):
    #   9 * (3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256 + 256*512
    #        + 5*512*512) = 9 * 1,634,496 = 14,710,464
    # Decoder, its mirror image:
    #   9 * (3*512*512 + 2*512*512 + 512*256 + 2*256*256 + 256*128 + 128*128
    #        + 128*64 + 64*64) = 9 * 1,634,304 = 14,708,736
    # 3x3 logits: 9*64*12 + 12 = 6,924
    # Batch norm, gamma and beta per channel: encoder 2 * 4,224 = 8,448 and
    #   decoder 2 * (3*512 + 2*512 + 256 + 2*256 + 128 + 128 + 64 + 64) = 7,424
    # Total 29,441,996. The authors' Caffe model also gives each of the 26
    # convolutions a bias (4,224 + 3,712 = 7,936, redundant before batch norm):
    # 29,449,932, its "29.5M".
    assert trainable_parameters(segnet_vgg16) == 29_441_996


@pytest.mark.backends
def test_segnet_basic_parameter_count():
    # 7x7 convolutions without biases: encoder 49*(3*64 + 3*64*64) = 611,520,
    # decoder 4*49*64*64 = 802,816; batch norm 8*2*64 = 1,024; 1x1 logits
    # 64*12 + 12 = 780. Total 1,416,140 (Table 1 of the paper: about 1.4M).
    assert trainable_parameters(build_segnet(12, variant="basic")) == 1_416_140


@pytest.mark.parametrize("size", [(360, 480), (375, 500)])
def test_segnet_vgg16_output_matches_input_size(segnet_vgg16, size):
    # 360 pools to 180, 90, 45, 23, 12 and 375 to 188, 94, 47, 24, 12: odd
    # sizes on the way, each restored exactly by its unpooling.
    images = np.zeros((1, *size, 3), "float32")
    assert segnet_vgg16.predict(images, verbose=0).shape == (1, *size, 12)


@pytest.mark.parametrize("upsampling", ["indices", "nearest"])
@pytest.mark.parametrize("size", [(45, 61), (23, 17)])
def test_segnet_basic_output_matches_input_size(size, upsampling):
    model = build_segnet(5, variant="basic", upsampling=upsampling)
    images = np.zeros((2, *size, 3), "float32")
    assert model.predict(images, verbose=0).shape == (2, *size, 5)


def test_upsampling_flag_selects_indices_or_nearest(segnet_vgg16):
    unpoolings = [
        layer for layer in segnet_vgg16.layers if isinstance(layer, MaxUnpooling2D)
    ]
    assert len(unpoolings) == 5
    nearest = build_segnet(5, variant="basic", upsampling="nearest")
    assert not any(isinstance(layer, MaxUnpooling2D) for layer in nearest.layers)
    assert any(isinstance(layer, keras.layers.UpSampling2D) for layer in nearest.layers)


def test_save_and_reload_give_identical_logits(tmp_path):
    model = build_segnet(4, variant="basic")
    path = os.path.join(tmp_path, "segnet.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 37, 50, 3))
    images = images.astype("float32")
    np.testing.assert_array_equal(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_backbone_weights_from_a_vgg16_file(tmp_path):
    vgg16 = keras.applications.VGG16(weights=None, include_top=False)
    path = os.path.join(tmp_path, "vgg16_notop.weights.h5")
    vgg16.save_weights(path)
    model = build_segnet(3, backbone_weights=path)
    np.testing.assert_array_equal(
        model.get_layer("block4_conv2").kernel.numpy(),
        vgg16.get_layer("block4_conv2").kernel.numpy(),
    )
    np.testing.assert_array_equal(
        model.get_layer("block1_conv1").kernel.numpy(),
        vgg16.get_layer("block1_conv1").kernel.numpy(),
    )


def test_offline_imagenet_error_names_the_way_out(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(InputError, match="--backbone-weights none"):
        build_segnet(3, backbone_weights="imagenet")


def test_basic_variant_refuses_a_backbone():
    with pytest.raises(SystemExit):
        segnet_train.parse_args(["--variant", "basic", "--backbone-weights", "x.h5"])
    assert segnet_train.parse_args(["--variant", "basic"]).backbone_weights is None


def camvid_argv(camvid_dir: str) -> list[str]:
    return [
        "--dataset",
        "folder",
        "--data-dir",
        camvid_dir,
        "--num-classes",
        str(CAMVID_CLASSES),
        "--ignore-index",
        str(CAMVID_VOID),
    ]


def test_median_frequency_weights_count_the_training_masks(camvid_dir):
    args = segnet_train.parse_args(camvid_argv(camvid_dir))
    dataset = cli.resolve_dataset(args)
    pairs = voc.list_pairs(dataset.data_dir, "train", dataset.layout)
    counts = voc.class_pixel_counts(pairs, CAMVID_CLASSES, dataset.ignore_index)
    weights = np.array(
        training.median_frequency_class_weights(*counts, dataset.class_names, 8)
    )
    class_pixels = np.zeros(CAMVID_CLASSES)
    present_pixels = np.zeros(CAMVID_CLASSES)
    for name in sorted(os.listdir(os.path.join(camvid_dir, "trainannot"))):
        mask = np.array(Image.open(os.path.join(camvid_dir, "trainannot", name)))
        mask = mask[mask != CAMVID_VOID]  # Void is never counted.
        counts = np.bincount(mask, minlength=CAMVID_CLASSES)
        class_pixels += counts
        present_pixels += (counts > 0) * mask.size
    expected = median_frequency_weights(class_pixels, present_pixels)
    np.testing.assert_allclose(weights, expected)
    assert weights[0] < 1 < weights.max()


def test_camvid_alias_reads_the_same_folder(camvid_dir):
    folder = segnet_train.parse_args(camvid_argv(camvid_dir))
    camvid = segnet_train.parse_args(["--dataset", "camvid", "--data-dir", camvid_dir])
    folder_spec = cli.resolve_dataset(folder)
    camvid_spec = cli.resolve_dataset(camvid)
    assert camvid_spec.layout == voc.detect_layout(camvid_dir) == "camvid"
    assert camvid_spec.ignore_index == folder_spec.ignore_index == CAMVID_VOID
    assert camvid_spec.num_classes == folder_spec.num_classes == CAMVID_CLASSES
    assert camvid_spec.class_names[0] == "sky"


# --------------------------------------------------------------------------
# main() end to end
# --------------------------------------------------------------------------

TINY_RUN = [
    "--variant",
    "basic",
    "--crop-size",
    "48",
    "--batch-size",
    "2",
    "--epochs",
    "2",
    "--steps-per-epoch",
    "4",
    "--val-steps",
    "1",
    "--num-predictions",
    "1",
]


def check_run(output_dir: str, results: dict, num_classes: int) -> None:
    with open(os.path.join(output_dir, "results.json")) as f:
        written = json.load(f)
    assert written == results
    for key in ("mean_iou", "pixel_accuracy", "per_class_iou", "val_loss", "argv"):
        assert key in written
    assert len(written["per_class_iou"]) == num_classes
    assert written["epochs_this_run"] == 2
    assert os.path.isfile(os.path.join(output_dir, "best.keras"))
    with open(os.path.join(output_dir, "history.csv")) as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses[-1] < losses[0]


def test_main_on_shapes(shapes_dir, tmp_path):
    output_dir = str(tmp_path / "run")
    argv = ["--dataset", "shapes", "--data-dir", shapes_dir, "--output-dir"]
    results = segnet_train.main([*argv, output_dir, *TINY_RUN])
    check_run(output_dir, results, num_classes=6)


def test_main_on_camvid_layout_with_median_frequency(camvid_dir, tmp_path):
    output_dir = str(tmp_path / "run")
    argv = [*camvid_argv(camvid_dir), "--class-weighting", "median"]
    results = segnet_train.main([*argv, "--output-dir", output_dir, *TINY_RUN])
    check_run(output_dir, results, num_classes=CAMVID_CLASSES)
