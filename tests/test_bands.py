"""Images that are not 8-bit RGB: greyscale, 16-bit and RGBA PNGs, multi-band TIFFs.

Each is read with its own bands and values, standardised inside the model with
band statistics measured on the training images, recorded in results.json and
used again by evaluate.py, predict.py and export.py. A file stored otherwise
than the rest is named in one line.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

import deeplab_train
import evaluate
import export
import predict
import unet_train
from common import cli, voc
from common.backbones import (
    RGB_INPUT_STD,
    adapt_first_convolution,
    adapt_rgb_kernel,
)
from common.errors import DatasetError
from common.layers import BandNormalization

SIZE = 32
MEMBRANE = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "membrane"
)


def make_images(kind: str, count: int, seed: int):
    """`count` (image, mask) pairs: class 1 where the image is bright."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        bright = (rng.random((SIZE, SIZE)) < 0.5).astype(np.int64)
        if kind == "grey8":
            image = bright * 150 + rng.integers(0, 50, (SIZE, SIZE))
            image = image.astype(np.uint8)
        elif kind == "grey16":  # Values far beyond 255, as a 16-bit sensor.
            image = bright * 30000 + rng.integers(0, 5000, (SIZE, SIZE))
            image = image.astype(np.uint16)
        else:  # Five 16-bit bands, each with its own offset.
            offsets = np.arange(5) * 1000
            noise = rng.integers(0, 500, (SIZE, SIZE, 5))
            image = (bright[..., None] * 2000 + offsets + noise).astype(np.uint16)
        pairs.append((image, bright.astype(np.uint8)))
    return pairs


def save_image(path_stem: str, image: np.ndarray) -> str:
    """PNG for 1 to 4 bands (PIL picks L, I;16, RGBA), TIFF for more."""
    if image.ndim == 3 and image.shape[-1] > 4:
        path = f"{path_stem}.tif"
        tifffile.imwrite(path, image, photometric="minisblack", planarconfig="contig")
    else:
        path = f"{path_stem}.png"
        Image.fromarray(image).save(path)
    return path


def write_folder(root, kind: str, train: int = 8, val: int = 2) -> str:
    """SPLIT/images + SPLIT/masks of `kind` images; returns the folder."""
    for split, count, seed in (("train", train, 0), ("val", val, 1)):
        for folder in ("images", "masks"):
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        for index, (image, mask) in enumerate(make_images(kind, count, seed)):
            save_image(os.path.join(root, split, "images", str(index)), image)
            Image.fromarray(mask).save(
                os.path.join(root, split, "masks", f"{index}.png")
            )
    return str(root)


def stored_images(data_dir: str, split: str) -> np.ndarray:
    """The split's images as written, `(N, H, W, bands)` float64."""
    paths = [image for image, _ in voc.list_pairs(data_dir, split)]
    arrays = [
        tifffile.imread(path) if path.endswith(".tif") else np.array(Image.open(path))
        for path in paths
    ]
    stacked = np.stack(arrays).astype(np.float64)
    return stacked[..., None] if stacked.ndim == 3 else stacked


KINDS = {"grey8": (1, "uint8"), "grey16": (1, "uint16"), "tiff5": (5, "uint16")}


@pytest.fixture(scope="module", params=list(KINDS))
def folder(request, tmp_path_factory):
    """(kind, data_dir) for each kind of image."""
    root = tmp_path_factory.mktemp(request.param)
    return request.param, write_folder(root / "data", request.param)


def train_argv(data_dir: str, output_dir, *extra: str) -> list[str]:
    argv = ["--dataset", "folder", "--data-dir", data_dir, "--num-classes", "2"]
    argv += ["--filters", "4", "8", "--crop-size", str(SIZE), "--batch-size", "2"]
    argv += ["--epochs", "1", "--steps-per-epoch", "1", "--num-predictions", "1"]
    return [*argv, "--output-dir", str(output_dir), *extra]


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """A U-Net trained for one step on `folder`: (kind, data_dir, run folder)."""
    kind, data_dir = folder
    run = tmp_path_factory.mktemp(f"run_{kind}")
    unet_train.main(train_argv(data_dir, run))
    return kind, data_dir, run


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def test_headers_give_bands_bit_depth_and_file_kind(tmp_path):
    grey = np.zeros((4, 6), np.uint8)
    cases = {
        "grey": (grey, voc.ImageFormat(1, "uint8")),
        "grey16": (grey.astype(np.uint16) + 300, voc.ImageFormat(1, "uint16")),
        "rgba": (np.zeros((4, 6, 4), np.uint8), voc.ImageFormat(4, "uint8")),
        "rgb": (np.zeros((4, 6, 3), np.uint8), voc.RGB),
        "five": (np.zeros((4, 6, 5), np.float32), voc.ImageFormat(5, "float32", True)),
    }
    for name, (image, expected) in cases.items():
        path = save_image(str(tmp_path / name), image)
        assert voc.image_header(path) == ((6, 4), expected), name
    Image.fromarray(grey).save(tmp_path / "grey.jpg")
    assert voc.image_header(str(tmp_path / "grey.jpg"))[1] == voc.RGB  # JPEG: 3.


def test_planar_tiffs_come_out_bands_last(tmp_path):
    image = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5)
    path = str(tmp_path / "planar.tif")
    tifffile.imwrite(path, np.moveaxis(image, -1, 0), planarconfig="separate")
    np.testing.assert_array_equal(voc.read_tiff(path), image)
    assert voc.image_header(path) == ((6, 4), voc.ImageFormat(5, "uint16", True))


def test_16_bit_and_rgba_pngs_keep_their_values(tmp_path):
    grey16 = np.array([[0, 255, 256, 65535]], np.uint16)
    path = save_image(str(tmp_path / "grey16"), grey16)
    image = voc.load_image(path, voc.ImageFormat(1, "uint16")).numpy()
    assert image.dtype == np.float32 and image.shape == (1, 4, 1)
    np.testing.assert_array_equal(image[..., 0], grey16)

    rgba = np.random.default_rng(0).integers(0, 256, (3, 5, 4)).astype(np.uint8)
    path = save_image(str(tmp_path / "rgba"), rgba)
    np.testing.assert_array_equal(
        voc.load_image(path, voc.ImageFormat(4, "uint8")).numpy(), rgba
    )


def test_pipeline_yields_float_images_of_the_stored_bands_and_values(folder):
    kind, data_dir = folder
    bands, dtype = KINDS[kind]
    pairs = voc.list_pairs(data_dir, "train")
    image_format = voc.detect_image_format([image for image, _ in pairs])
    assert (image_format.bands, image_format.dtype) == (bands, dtype)
    assert image_format.tiff == (kind == "tiff5") and not image_format.is_rgb

    common = dict(layout="auto", num_classes=2, image_format=image_format)
    evaluation = voc.make_dataset(data_dir, "val", 2, SIZE, False, **common)
    images, masks = next(iter(evaluation))
    assert images.dtype == tf.float32 and images.shape == (2, SIZE, SIZE, bands)
    np.testing.assert_array_equal(images.numpy(), stored_images(data_dir, "val"))
    assert masks.shape == (2, SIZE, SIZE)

    training = voc.make_dataset(data_dir, "train", 4, 32, True, **common)
    images, masks = next(iter(training))
    assert images.dtype == tf.float32 and images.shape == (4, 32, 32, bands)
    assert images.numpy().max() > 255 or kind == "grey8"  # Not squeezed to 8 bits.


def test_band_statistics_match_numpy(folder):
    kind, data_dir = folder
    pairs = voc.list_pairs(data_dir, "train")
    image_format = voc.detect_image_format([image for image, _ in pairs])
    pixels = stored_images(data_dir, "train").reshape(-1, KINDS[kind][0])
    np.testing.assert_allclose(image_format.band_mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(image_format.band_std, pixels.std(axis=0), rtol=1e-9)
    assert image_format.pad_value == image_format.band_mean


def test_statistics_sample_spreads_over_the_split_and_a_constant_band_gets_std_1(
    tmp_path,
):
    paths = [f"{index}.png" for index in range(1000)]
    sample = voc.statistics_sample(paths)
    assert len(sample) == voc.STATISTICS_IMAGES and sample[0] == "0.png"
    assert sample[-1] == "999.png" and len(set(sample)) == len(sample)

    opaque = np.zeros((4, 4, 4), np.uint8)
    opaque[..., :3] = np.arange(16).reshape(4, 4, 1)
    opaque[..., 3] = 255  # A fully opaque alpha band.
    path = save_image(str(tmp_path / "rgba"), opaque)
    mean, std = voc.band_statistics([path], voc.ImageFormat(4, "uint8"))
    assert mean[3] == 255 and std[3] == 1.0 and std[0] > 0


def test_rgb_images_are_read_exactly_as_before(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    path = save_image(str(tmp_path / "rgb"), rgb)
    image = voc.load_image(path)  # The default format: RGB.
    assert image.dtype == tf.uint8
    np.testing.assert_array_equal(image.numpy(), rgb)
    assert voc.detect_image_format([path]) == voc.RGB  # No statistics for RGB.
    assert voc.RGB.pad_value == (123.675, 116.28, 103.53)


def test_an_image_with_other_bands_is_named_in_one_line(tmp_path):
    data_dir = write_folder(tmp_path / "data", "grey8")
    odd = os.path.join(data_dir, "train", "images", "5.png")
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(odd)
    with pytest.raises(DatasetError, match="5.png") as error:
        unet_train.main(train_argv(data_dir, tmp_path / "run"))
    assert "\n" not in str(error.value) and "3 bands" in str(error.value)
    assert not (tmp_path / "run").exists()

    data_dir = write_folder(tmp_path / "tiffs", "tiff5")
    odd = os.path.join(data_dir, "val", "images", "1.tif")
    tifffile.imwrite(odd, np.zeros((SIZE, SIZE, 4), np.uint16), photometric="rgb")
    with pytest.raises(DatasetError, match="1.tif") as error:
        unet_train.main(train_argv(data_dir, tmp_path / "run"))
    assert "\n" not in str(error.value) and "4 bands" in str(error.value)


def test_input_channels_must_be_the_images_bands(tmp_path, shapes_dir):
    data_dir = write_folder(tmp_path / "data", "grey8")
    with pytest.raises(DatasetError, match="--input-channels 3, but the training"):
        unet_train.main(train_argv(data_dir, tmp_path / "run", "--input-channels", "3"))
    with pytest.raises(DatasetError, match="RGB images"):
        unet_train.main(
            ["--dataset", "shapes", "--data-dir", shapes_dir, "--input-channels", "1"]
        )


# --------------------------------------------------------------------------
# The model: standardisation inside, first convolution adapted
# --------------------------------------------------------------------------


def test_band_normalization_standardises_and_round_trips(tmp_path):
    layer = BandNormalization((1000.0, 10.0), (250.0, 2.0), name="band_normalization")
    images = keras.Input((None, None, 2))
    model = keras.Model(images, layer(images))
    output = model(np.array([[[[1500.0, 10.0]]]], np.float32))
    np.testing.assert_allclose(output, [[[[2.0, 0.0]]]])
    assert layer.get_config()["mean"] == [1000.0, 10.0]

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("band_normalization").std == (250.0, 2.0)
    np.testing.assert_allclose(
        loaded(np.full((1, 1, 1, 2), 65535.0)), model(np.full((1, 1, 1, 2), 65535.0))
    )


def test_band_normalization_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = BandNormalization((30000.0,), (20000.0,))
        output = layer(np.full((1, 2, 2, 1), 65535.0, np.float32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert output.dtype == "float32" and np.isfinite(output).all()


def test_adapted_kernel_follows_segmentation_models():
    rgb = np.random.default_rng(0).normal(size=(3, 3, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(adapt_rgb_kernel(rgb, 1), rgb.sum(axis=2, keepdims=True))
    five = adapt_rgb_kernel(rgb, 5)
    np.testing.assert_allclose(five, rgb[:, :, [0, 1, 2, 0, 1]] * 3 / 5, rtol=1e-6)
    np.testing.assert_allclose(adapt_rgb_kernel(rgb, 2), rgb[:, :, [0, 1]] * 1.5)

    # A grey image through the summed kernel = the same grey as RGB through RGB's.
    grey = np.random.default_rng(1).random((1, 6, 6, 1)).astype(np.float32)
    one_band = tf.nn.conv2d(grey, adapt_rgb_kernel(rgb, 1), 1, "SAME")
    as_rgb = tf.nn.conv2d(np.repeat(grey, 3, axis=-1), rgb, 1, "SAME")
    np.testing.assert_allclose(one_band, as_rgb, rtol=1e-5, atol=1e-5)


def test_first_convolution_without_bias_takes_the_adapted_kernel(capsys):
    def convolution(bands: int, use_bias: bool) -> keras.Model:
        images = keras.Input((None, None, bands))
        x = keras.layers.Conv2D(4, 3, use_bias=use_bias, name="block1_conv1")(images)
        return keras.Model(images, keras.layers.Conv2D(2, 1, name="block1_conv2")(x))

    source, target = convolution(3, True), convolution(4, False)
    assert adapt_first_convolution(source, target, "vgg16") == ["block1_conv1"]
    expected = adapt_rgb_kernel(source.get_layer("block1_conv1").kernel.numpy(), 4)
    np.testing.assert_allclose(
        target.get_layer("block1_conv1").kernel, expected * RGB_INPUT_STD["vgg16"]
    )
    assert "first convolution adapted from RGB to 4 bands" in capsys.readouterr().out


def test_deeplab_adapts_a_mobilenetv2_weights_file_to_one_band(tmp_path, capsys):
    source = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(None, None, 3)
    )
    path = str(tmp_path / "mobilenetv2.weights.h5")
    source.save_weights(path)
    model = deeplab_train.build_deeplab(
        2,
        "v3plus",
        "mobilenetv2",
        backbone_weights=path,
        input_shape=(None, None, 1),
        band_mean=(100.0,),
        band_std=(20.0,),
        head_filters=8,
    )
    kernel = source.get_layer("Conv1").kernel.numpy()
    np.testing.assert_allclose(
        model.get_layer("Conv1").kernel,
        adapt_rgb_kernel(kernel, 1) * RGB_INPUT_STD["mobilenetv2"],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        model.get_layer("block_1_expand").kernel,
        source.get_layer("block_1_expand").kernel,
    )
    assert "to_unit_range" not in [layer.name for layer in model.layers]
    assert (
        "Conv1: first convolution adapted from RGB to 1 band" in capsys.readouterr().out
    )
    assert model(np.zeros((1, 64, 64, 1), np.float32)).shape == (1, 64, 64, 2)


# --------------------------------------------------------------------------
# Training, evaluate.py, predict.py, export.py
# --------------------------------------------------------------------------


def test_unet_trains_and_records_the_band_statistics(trained):
    kind, data_dir, run = trained
    bands, dtype = KINDS[kind]
    with open(run / "results.json") as f:
        results = json.load(f)
    entry = results["dataset"]
    assert (entry["bands"], entry["dtype"]) == (bands, dtype)
    assert results["settings"]["input_channels"] == bands
    pixels = stored_images(data_dir, "train").reshape(-1, bands)
    np.testing.assert_allclose(entry["band_mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(entry["band_std"], pixels.std(axis=0), rtol=1e-9)

    model = keras.models.load_model(run / "best.keras", compile=False)
    assert model.input_shape == (None, None, None, bands)
    normalization = model.get_layer("band_normalization")
    assert normalization.mean == tuple(entry["band_mean"])


def test_evaluate_and_predict_run_on_the_band_model(trained, tmp_path):
    kind, data_dir, run = trained
    with open(run / "results.json") as f:
        results = json.load(f)
    model = str(run / "best.keras")
    scores = evaluate.main(["--model", model, "--output-dir", str(tmp_path / "e")])
    assert scores["confusion_matrix"] == results["confusion_matrix"]
    tiled = evaluate.main(
        ["--model", model, "--flip", "--tile", "32", "--output-dir", str(tmp_path)]
    )
    assert np.array(tiled["confusion_matrix"]).sum() == 2 * SIZE * SIZE

    image = voc.list_pairs(data_dir, "val")[0][0]
    out = tmp_path / "predictions"
    assert predict.main(["--model", model, "--out", str(out), image]) == 0
    mask = np.array(Image.open(out / "0_mask.png"))
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 1}
    assert (out / "0_overlay.jpg").is_file()


def test_predict_names_an_input_of_other_bands(trained, tmp_path, capsys):
    _, _, run = trained
    photo = save_image(str(tmp_path / "photo"), np.zeros((SIZE, SIZE, 3), np.uint8))
    argv = ["--model", str(run / "best.keras"), "--out", str(tmp_path), photo]
    assert predict.main(argv) == 1
    assert "photo.png" in capsys.readouterr().err


def test_export_takes_the_bands_and_pads_with_their_mean(trained, tmp_path):
    kind, data_dir, run = trained
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    info = export.main(
        ["--model", str(run / "best.keras"), "--format", "saved_model", "onnx"]
        + ["--out", str(tmp_path), "--check-images", "2"]
    )
    with open(run / "results.json") as f:
        band_mean = json.load(f)["dataset"]["band_mean"]
    bands, dtype = KINDS[kind]
    signature = info["input"]
    assert signature["shape"][-1] == bands and str(band_mean) in signature["sizes"]
    assert signature["dtype"] == ("uint8" if dtype == "uint8" else "float32")
    for row in info["check"]["exports"]:  # main() fails below 99.9%, too.
        assert row["pixel_agreement"] >= export.MIN_AGREEMENT

    # predict.py runs the exported file on an image as stored.
    image = voc.list_pairs(data_dir, "val")[0][0]
    argv = ["--model", str(tmp_path / "model.onnx"), "--out", str(tmp_path), image]
    assert predict.main([*argv, "--flip"]) == 0
    assert (tmp_path / "0_mask.png").is_file()


def test_the_flag_and_the_format_reach_the_dataset_spec(tmp_path):
    data_dir = write_folder(tmp_path / "data", "grey16")
    parser = cli.ArgumentParser()
    cli.add_training_args(parser)
    argv = ["--dataset", "folder", "--data-dir", data_dir, "--num-classes", "2"]
    args = parser.parse_args(argv)
    assert args.input_channels is None
    dataset = cli.resolve_dataset(args)
    assert dataset.image_format.bands == args.input_channels == 1
    assert dataset.image_format.dtype == "uint16"

    evaluation = cli.ArgumentParser()
    cli.add_dataset_args(evaluation)  # No --input-channels: nothing is read.
    assert cli.resolve_dataset(evaluation.parse_args(argv)).image_format == voc.RGB


# --------------------------------------------------------------------------
# The ISBI 2012 membranes: greyscale
# --------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir(MEMBRANE), reason=f"{MEMBRANE} is absent")
def test_membrane_slices_load_as_one_band(tmp_path):
    for split, numbers in (("train", (0, 1)), ("val", (2,))):
        for folder, source in (("images", "image"), ("masks", "label")):
            os.makedirs(tmp_path / split / folder)
            for number in numbers:
                shutil.copy(
                    os.path.join(MEMBRANE, "train", source, f"{number}.png"),
                    tmp_path / split / folder / f"{number}.png",
                )
    pairs = voc.list_pairs(str(tmp_path), "train")
    image_format = voc.detect_image_format([image for image, _ in pairs])
    assert (image_format.bands, image_format.dtype) == (1, "uint8")
    dataset = voc.make_dataset(
        str(tmp_path),
        "train",
        2,
        256,
        False,
        num_classes=2,
        mask_values="binary",
        image_format=image_format,
    )
    images, _ = next(iter(dataset))
    assert images.shape == (2, 512, 512, 1)
