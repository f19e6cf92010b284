"""Tiled inference (`common.inference.predict_tiled`): the same answer in windows.

A window sees less context than the whole image only within the receptive
field of its inner edges, so a small convolutional model must agree with its
whole-image prediction everywhere else, and a pointwise one everywhere.
"""

import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import evaluate
import predict
from common import inference
from common.errors import InputError
from common.exported import ExportedModel
from common.voc import decode_mask

NUM_CLASSES = 5
# Three 3x3 convolutions: a pixel's logits see 3 pixels to each side.
RECEPTIVE_RADIUS = 3


def convolutional_model(seed=0):
    """Three same-padded 3x3 convolutions, random: fully convolutional, small field."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 64, offset=-2)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    logits = keras.layers.Conv2D(NUM_CLASSES, 3, padding="same", name="logits")(x)
    return keras.Model(inputs, logits, name="three_convs")


def pointwise_model(seed=0, num_classes=NUM_CLASSES):
    """One 1x1 convolution: a pixel's logits depend on that pixel only."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(
        inputs, keras.layers.Conv2D(num_classes, 1, name="logits")(inputs)
    )
    model.get_layer("logits").set_weights(
        [
            rng.normal(size=(1, 1, 3, num_classes)).astype(np.float32) / 32,
            np.zeros(num_classes, np.float32),
        ]
    )
    return model


def random_image(height, width, seed=1):
    """Smooth random blobs (a photo is not white noise), uint8 `(H, W, 3)`."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def near_inner_edges(height, width, tile, overlap, radius):
    """True where some window's inner edge (one that is not the image's border)
    is within `radius` pixels: the only pixels a window sees differently."""
    near = np.zeros((height, width), bool)
    for top in inference.tile_starts(height, tile, overlap):
        for left in inference.tile_starts(width, tile, overlap):
            bottom, right = top + tile, left + tile
            window = np.zeros((height, width), bool)
            window[top:bottom, left:right] = True
            # Shrunk by `radius` on each side that lies inside the image.
            core = np.zeros((height, width), bool)
            core[
                top + radius * (top > 0) : bottom - radius * (bottom < height),
                left + radius * (left > 0) : right - radius * (right < width),
            ] = True
            near |= window & ~core
    return near


@pytest.mark.parametrize("tile_blend", ["gaussian", "linear"])
def test_tiles_agree_with_the_whole_image_except_near_inner_tile_edges(tile_blend):
    model = convolutional_model()
    image = random_image(96, 128)
    whole = inference.predict_probabilities(model, image.astype(np.float32)).numpy()

    tiled = inference.predict_tiled(
        model, image, tile=64, tile_overlap=0.25, tile_blend=tile_blend
    )

    near = near_inner_edges(96, 128, 64, 0.25, RECEPTIVE_RADIUS)
    # Away from inner edges every window sees what the whole image sees.
    np.testing.assert_allclose(tiled[~near], whole[~near], atol=1e-5)
    disagree = tiled.argmax(-1) != whole.argmax(-1)
    assert not (disagree & ~near).any()
    # Near them the other windows, which see those pixels in their interior,
    # outweigh the edge: a share of a percent at most disagrees.
    assert disagree.mean() < 0.01, disagree.mean()
    assert near.mean() > 0.1  # The check above is not vacuous.


def test_overlap_and_falling_weights_are_what_hide_the_tile_edges():
    model = convolutional_model()
    image = random_image(96, 128)
    whole = inference.predict_probabilities(model, image.astype(np.float32))
    whole_labels = whole.numpy().argmax(-1)

    def disagreement(tile_overlap, tile_blend):
        tiled = inference.predict_tiled(
            model, image, tile=64, tile_overlap=tile_overlap, tile_blend=tile_blend
        )
        return (tiled.argmax(-1) != whole_labels).mean()

    # Windows that only abut: pixels at their seams see zero padding, nothing
    # else. Measured: 1.8 % of pixels; gaussian 0.25 overlap: none; linear 0.3 %.
    abutting = disagreement(0.0, "gaussian")
    assert abutting > 0.005
    assert disagreement(0.25, "gaussian") < abutting / 4
    assert disagreement(0.25, "linear") < abutting / 2


def test_a_pointwise_model_agrees_everywhere():
    model = pointwise_model()
    image = random_image(96, 128)
    whole = inference.predict_probabilities(model, image.astype(np.float32)).numpy()

    for tile_blend in ("gaussian", "linear"):
        tiled = inference.predict_tiled(
            model, image, tile=32, tile_overlap=0.5, tile_blend=tile_blend
        )
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
        np.testing.assert_array_equal(tiled.argmax(-1), whole.argmax(-1))


@pytest.mark.parametrize("tile_blend", ["gaussian", "linear"])
@pytest.mark.parametrize("size", [(64, 64), (33, 50)])
def test_weights_are_positive_and_largest_at_the_centre(tile_blend, size):
    weights = inference.tile_weights(*size, tile_blend)

    assert weights.shape == size and weights.dtype == np.float32
    assert (weights > 0).all() and weights.max() == 1
    centre = ((size[0] - 1) // 2, (size[1] - 1) // 2)
    assert weights[centre] == weights.max()
    # Falling from the centre to every edge.
    assert (np.diff(weights[centre[0], : centre[1] + 1]) >= 0).all()
    assert (np.diff(weights[centre[0], centre[1] :]) <= 0).all()
    assert (np.diff(weights[: centre[0] + 1, centre[1]]) >= 0).all()
    assert weights[0, 0] < weights[0, centre[1]] < weights[centre]


def test_gaussian_sigma_is_an_eighth_of_the_window():
    weights = inference.tile_weights(81, 81, "gaussian")  # Centre 40, sigma 10.125.
    sigma = 81 / 8
    assert weights[40, 50] == pytest.approx(np.exp(-0.5 * (10 / sigma) ** 2))
    assert weights[40, 0] == pytest.approx(np.exp(-0.5 * (40 / sigma) ** 2))


@pytest.mark.parametrize(
    "length, tile, overlap",
    [(128, 64, 0.25), (100, 64, 0.25), (1000, 512, 0.25), (513, 512, 0.5),
     (640, 64, 0.0), (97, 32, 0.9), (64, 64, 0.25), (30, 64, 0.25)],
)  # fmt: skip
def test_windows_cover_every_pixel_and_stay_inside(length, tile, overlap):
    starts = inference.tile_starts(length, tile, overlap)

    if length <= tile:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == length - tile  # Shifted inward.
    steps = np.diff(starts)
    assert (steps > 0).all()
    assert (steps <= tile - round(overlap * tile)).all()  # At least that overlap.
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()


def test_the_network_sees_full_windows_in_batches_and_every_pixel_once_placed():
    calls = []

    def identity_logits(tiles):  # Any callable from windows to logits will do.
        calls.append(tiles.shape)
        return tiles / 64  # "Logits" = the pixel itself: placement shows.

    image = random_image(100, 150)
    tiled = inference.predict_tiled(
        identity_logits, image, tile=64, tile_overlap=0.25, tile_batch_size=3
    )

    tops = inference.tile_starts(100, 64, 0.25)
    lefts = inference.tile_starts(150, 64, 0.25)
    assert sum(shape[0] for shape in calls) == len(tops) * len(lefts)
    assert all(shape[0] <= 3 and shape[1:] == (64, 64, 3) for shape in calls)
    expected = keras.ops.softmax(image.astype(np.float32) / 64).numpy()
    np.testing.assert_allclose(tiled, expected, atol=1e-5)


def test_an_image_smaller_than_the_window_is_padded_as_without_tiles():
    model = convolutional_model(seed=3)
    image = random_image(37, 50)
    whole = inference.predict_probabilities(model, image.astype(np.float32)).numpy()

    tiled = inference.predict_tiled(model, image, tile=128)

    assert tiled.shape == (37, 50, NUM_CLASSES)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # One side shorter than the window, one longer: windows of 64 x 128.
    tall = inference.predict_tiled(model, random_image(300, 50), tile=128)
    assert tall.shape == (300, 50, NUM_CLASSES)
    np.testing.assert_allclose(tall.sum(-1), 1, atol=1e-5)


def test_labels_band_by_band_equal_the_argmax_of_the_probabilities():
    model = convolutional_model(seed=4)
    image = random_image(200, 90)
    settings = {"tile": 64, "tile_overlap": 0.3, "tile_batch_size": 2}

    probabilities = inference.predict_tiled(model, image, **settings)
    labels = inference.predict_tiled_labels(model, image, **settings)
    bands = list(inference.tiled_probability_bands(model, image, **settings))

    assert labels.dtype == np.uint8 and labels.shape == (200, 90)
    np.testing.assert_array_equal(labels, probabilities.argmax(-1))
    assert sum(len(band) for band in bands) == 200
    assert max(len(band) for band in bands) <= 64  # One window tall at most.


class PointwiseExport(ExportedModel):
    """An 'export' of a pointwise model: probabilities out, padding its own."""

    def __init__(self, kernel):
        self.path = self.name = "pointwise.onnx"
        self.metadata, self.class_names, self.kernel = {}, None, kernel

    def run(self, images):
        logits = images.astype(np.float32) @ self.kernel
        return {"probabilities": keras.ops.softmax(logits).numpy()}


def test_an_exported_model_takes_any_window_and_blends_like_the_keras_one():
    model = pointwise_model(seed=5)
    kernel = model.get_layer("logits").get_weights()[0][0, 0]
    image = random_image(90, 120)
    expected = inference.predict_probabilities(model, image.astype(np.float32))

    exported = PointwiseExport(kernel)
    tiled = inference.predict_tiled(exported, image, tile=50, size_divisor=1)

    np.testing.assert_allclose(tiled, expected.numpy(), atol=1e-4)


def write_image(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def read_mask(path):
    return decode_mask(tf.io.read_file(str(path)), str(path)).numpy()


def test_predict_with_tiles_writes_the_mask_it_writes_without(tmp_path, capsys):
    pointwise_model(seed=6).save(tmp_path / "m.keras")
    write_image(tmp_path / "photo.png", random_image(100, 150))
    common = ["--model", str(tmp_path / "m.keras"), str(tmp_path / "photo.png")]

    assert predict.main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert predict.main([*common, "--out", str(tmp_path / "tiled"),
                         "--tile", "64", "--tile-blend", "linear"]) == 0  # fmt: skip
    # The run's crop size, from results.json beside the model.
    (tmp_path / "results.json").write_text(json.dumps({"settings": {"crop_size": 32}}))
    assert predict.main([*common, "--out", str(tmp_path / "crop"),
                         "--tile", "crop", "--flip"]) == 0  # fmt: skip

    whole = read_mask(tmp_path / "whole" / "photo_mask.png")
    assert whole.shape == (100, 150) and len(np.unique(whole)) > 1
    np.testing.assert_array_equal(
        read_mask(tmp_path / "tiled" / "photo_mask.png"), whole
    )
    np.testing.assert_array_equal(
        read_mask(tmp_path / "crop" / "photo_mask.png"), whole
    )


def test_evaluate_with_tiles_scores_a_pointwise_model_as_without(write_voc, tmp_path):
    rng = np.random.default_rng(7)
    examples = {
        f"im{i}": (random_image(*size, seed=i), rng.integers(0, 3, size, np.uint8))
        for i, size in enumerate([(70, 90), (40, 33)])
    }
    data_dir = write_voc({"val": examples})
    pointwise_model(seed=8, num_classes=21).save(tmp_path / "model.keras")
    common = ["--model", str(tmp_path / "model.keras"), "--data-dir", data_dir]

    plain = evaluate.main([*common, "--output-dir", str(tmp_path / "plain")])
    tiled = evaluate.main([*common, "--output-dir", str(tmp_path / "tiled"),
                           "--tile", "32"])  # fmt: skip

    assert tiled["tile"]["tile"] == 32 and plain["tile"] is None
    assert tiled["confusion_matrix"] == plain["confusion_matrix"]


@pytest.mark.parametrize(
    "flags, message",
    [(["--tile", "0"], "argument --tile: must be a size in pixels >= 1 or 'crop'"),
     (["--tile", "big"], "argument --tile: must be a size in pixels"),
     (["--tile", "64", "--tile-overlap", "1"],
      "argument --tile-overlap: must be a number in [0, 1), not '1'"),
     (["--tile", "64", "--tile-overlap", "-0.1"], "must be a number in [0, 1)"),
     (["--tile", "64", "--tile-blend", "box"], "argument --tile-blend: invalid"),
     (["--tile", "64", "--tile-batch-size", "0"], "must be an integer >= 1")],
)  # fmt: skip
def test_bad_tile_flags_are_one_line_errors(flags, message, capsys):
    for script, argv in ((predict, ["m.keras", "x.png"]), (evaluate, ["m.keras"])):
        with pytest.raises(SystemExit) as exit_info:
            script.make_parser().parse_args(["--model", *argv, *flags])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1


def test_a_window_the_model_cannot_take_is_a_one_line_error(tmp_path):
    pointwise_model().save(tmp_path / "m.keras")
    write_image(tmp_path / "photo.png", random_image(40, 40))
    argv = ["--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "out"),
            str(tmp_path / "photo.png")]  # fmt: skip

    with pytest.raises(InputError, match=r"^--tile 100: must be a multiple of 32"):
        predict.main([*argv, "--tile", "100"])
    # No results.json beside the model: no crop size to take.
    with pytest.raises(InputError, match=r"^--tile crop: no training crop size"):
        predict.main([*argv, "--tile", "crop"])
    for size, nearest in ((100, "96 or 128"), (16, "32")):
        with pytest.raises(InputError) as error:
            inference.tile_settings(
                predict.make_parser().parse_args([*argv, "--tile", str(size)]), 32
            )
        assert "\n" not in str(error.value)
        assert str(error.value).endswith(f"the nearest windows it takes are {nearest}.")
    # An exported model pads inside its graph (size divisor 1): any window.
    args = predict.make_parser().parse_args([*argv, "--tile", "100"])
    assert inference.tile_settings(args, 1)["tile"] == 100
