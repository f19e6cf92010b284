"""Black-and-white (0/255) masks: read exactly with --mask-values binary, never
silently as void, and every ambiguous or bad value is an error naming the file."""

import argparse
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import evaluate
import unet_train
from common import cli
from common.constants import IGNORE_LABEL
from common.errors import DatasetError
from common.voc import (
    check_mask_values,
    class_pixel_counts,
    decode_binary_mask,
    list_pairs,
    load_pair,
    make_dataset,
    voc_colormap,
)

# A 4x6 black-and-white mask: 255 (class 1) on the top half, 0 (class 0) below.
WHITE_TOP = np.zeros((4, 6), np.uint8)
WHITE_TOP[:2] = 255
CLASSES_TOP = (WHITE_TOP == 255).astype(np.uint8)


def save_png(path, array, mode="L"):
    image = Image.fromarray(array).convert(mode)
    image.save(path)
    return str(path)


def decode_file(path, ignore_index=IGNORE_LABEL):
    return decode_binary_mask(tf.io.read_file(path), path, ignore_index).numpy()


def write_folder(root, masks, split="train"):
    """SPLIT/images + SPLIT/masks with one grey image per mask; returns root."""
    for folder in ("images", "masks"):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        save_png(
            root / split / "images" / f"{i}.png", np.full(mask.shape, 90, np.uint8)
        )
        save_png(root / split / "masks" / f"{i}.png", mask)
    return str(root)


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGB", "P"])
def test_every_png_kind_of_black_and_white_decodes_exactly(tmp_path, mode):
    path = save_png(tmp_path / "mask.png", WHITE_TOP, mode)
    np.testing.assert_array_equal(decode_file(path), CLASSES_TOP)


def test_a_grey_value_in_a_binary_mask_is_an_error_naming_the_file(tmp_path):
    mask = WHITE_TOP.copy()
    mask[3, 5] = 128  # An anti-aliased or JPEG edge: its class would be a guess.
    path = save_png(tmp_path / "smooth.png", mask)
    with pytest.raises(tf.errors.InvalidArgumentError, match="smooth.png") as error:
        decode_file(path)
    assert (
        "128" in error.value.message and "--mask-values binary" in error.value.message
    )


def test_binary_masks_can_mark_void_with_another_grey_value(tmp_path):
    mask = WHITE_TOP.copy()
    mask[3, 5] = 128
    path = save_png(tmp_path / "void.png", mask)
    expected = CLASSES_TOP.copy()
    expected[3, 5] = IGNORE_LABEL
    np.testing.assert_array_equal(decode_file(path, ignore_index=128), expected)


def test_default_refuses_masks_of_only_0_and_255_naming_the_first_nonzero_one(
    tmp_path,
):
    # The first mask is all background and says nothing; the second decides.
    data_dir = write_folder(tmp_path, [np.zeros((4, 6), np.uint8), WHITE_TOP])
    with pytest.raises(DatasetError, match=r"masks/1\.png.*--mask-values binary"):
        make_dataset(data_dir, "train", 2, 32, False, num_classes=2)


def test_binary_and_index_read_the_same_file_differently(tmp_path):
    data_dir = write_folder(tmp_path, [WHITE_TOP, WHITE_TOP])
    read = {
        mask_values: next(
            iter(make_dataset(data_dir, "train", 2, 32, False, num_classes=2,
                              mask_values=mask_values))
        )[1].numpy()[0, :4, :6]
        for mask_values in ("binary", "index")
    }  # fmt: skip
    np.testing.assert_array_equal(read["binary"], CLASSES_TOP)
    # index, asked for explicitly: 255 is void, as the user said.
    np.testing.assert_array_equal(read["index"], WHITE_TOP)


def test_index_masks_with_void_borders_need_no_flag(tmp_path):
    mask = np.array([[0, 0, 255, 1, 1, 1]] * 4, np.uint8)
    data_dir = write_folder(tmp_path, [mask, mask])
    _, masks = next(iter(make_dataset(data_dir, "train", 2, 32, False, num_classes=2)))
    np.testing.assert_array_equal(masks.numpy()[0, :4, :6], mask)


def test_palette_masks_of_background_and_border_are_not_ambiguous(tmp_path):
    mask = Image.fromarray(WHITE_TOP, mode="P")  # VOC border colour = void.
    mask.putpalette(voc_colormap().ravel().tolist())
    mask.save(tmp_path / "voc.png")
    check_mask_values([str(tmp_path / "voc.png")], 21)  # Does not raise.


@pytest.mark.parametrize(
    "num_classes, ignore_index, message",
    [(3, IGNORE_LABEL, "--num-classes is 3: use 2"), (2, 0, "--ignore-index")],
)
def test_binary_refuses_flags_that_cannot_work(num_classes, ignore_index, message):
    with pytest.raises(DatasetError, match=message):
        check_mask_values([], num_classes, "binary", ignore_index)


def test_255_is_an_error_when_the_dataset_void_is_another_value(tmp_path):
    # CamVid-style data (void 11): 11 becomes void; a stray 255 is a bad mask.
    good, stray = np.array([[0, 11, 1, 1]], np.uint8), np.array([[0, 11, 255, 1]])
    data_dir = write_folder(tmp_path, [good, stray.astype(np.uint8)])
    (image_0, mask_0), (image_1, mask_1) = list_pairs(data_dir, "train")
    _, mask = load_pair(image_0, mask_0, 2, ignore_index=11)
    assert mask.numpy().tolist() == [[0, IGNORE_LABEL, 1, 1]]
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"(?s)1\.png.*255.*not 11"
    ):
        load_pair(image_1, mask_1, 2, ignore_index=11)


def test_class_counts_and_verify_read_binary_masks(tmp_path, capsys):
    data_dir = write_folder(tmp_path, [WHITE_TOP, 255 - WHITE_TOP, WHITE_TOP])
    counts, _ = class_pixel_counts(list_pairs(data_dir, "train"), 2, 255, "binary")
    assert counts.tolist() == [36, 36]

    argv = [data_dir, "--dataset", "folder", "--num-classes", "2"]
    argv += ["--class-names", "membrane", "cell"]
    with pytest.raises(SystemExit, match="holds only 0 and 255"):
        cli.verify_main(["verify", *argv])
    cli.verify_main(["verify", *argv, "--mask-values", "binary"])
    assert "cell" in capsys.readouterr().out


def test_unet_trains_and_evaluate_scores_on_binary_masks(tmp_path):
    rng = np.random.default_rng(0)
    masks = [np.where(rng.random((32, 32)) < 0.5, 0, 255).astype(np.uint8)] * 4
    write_folder(tmp_path / "data", masks, "train")
    data_dir = write_folder(tmp_path / "data", masks[:2], "val")
    data = ["--dataset", "folder", "--data-dir", data_dir, "--num-classes", "2"]
    data += ["--mask-values", "binary", "--class-names", "membrane", "cell"]
    argv = [*data, "--filters", "4", "8", "--crop-size", "32", "--batch-size", "2"]
    argv += ["--epochs", "1", "--steps-per-epoch", "1", "--num-predictions", "1"]
    argv += ["--output-dir", str(tmp_path / "run")]

    results = unet_train.main(argv)

    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["dataset"]["mask_values"] == "binary"
    # Both classes were scored: under the default reading, "cell" would be void.
    matrix = np.array(results["confusion_matrix"])
    assert matrix.sum() == 2 * 32 * 32 and matrix.sum(axis=1).min() > 0

    # evaluate.py reads the masks the same way, batched and one image at a time.
    model = ["--model", str(tmp_path / "run" / "best.keras"), "--split", "val"]
    plain = evaluate.main([*model, *data])
    assert plain["confusion_matrix"] == results["confusion_matrix"]
    flipped = evaluate.main([*model, *data, "--flip"])
    assert np.array(flipped["confusion_matrix"]).sum() == 2 * 32 * 32


def test_the_flag_reaches_the_dataset_spec():
    parser = argparse.ArgumentParser()
    cli.add_dataset_args(parser)
    argv = ["--dataset", "folder", "--data-dir", "x", "--num-classes", "2"]
    args = parser.parse_args([*argv, "--mask-values", "binary"])
    assert cli.resolve_dataset(args).mask_values == "binary"
