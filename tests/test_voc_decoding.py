"""decode_mask must give exactly the class indices PIL reads from the PNG."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common.voc import (
    IGNORE_LABEL,
    VOC_CLASSES,
    VOC_COLORMAP,
    decode_mask,
    voc_colormap,
)


def write_palette_png(path, indices):
    image = Image.fromarray(np.asarray(indices, np.uint8), mode="P")
    image.putpalette(voc_colormap().ravel().tolist())
    image.save(path)


def decode_file(path):
    return decode_mask(tf.io.read_file(path), path).numpy()


def test_palette_matches_the_vocdevkit_table():
    assert len(VOC_CLASSES) == len(VOC_COLORMAP) == 21
    assert VOC_CLASSES[0] == "background"
    assert VOC_COLORMAP[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert VOC_COLORMAP[15] == (192, 128, 128)  # person
    assert VOC_COLORMAP[20] == (0, 64, 128)  # tvmonitor
    assert tuple(voc_colormap()[IGNORE_LABEL]) == (224, 224, 192)


def test_palette_png_decodes_to_indices(tmp_path):
    rng = np.random.default_rng(0)
    values = np.array(list(range(21)) + [IGNORE_LABEL], np.uint8)
    indices = rng.choice(values, size=(37, 53))
    path = str(tmp_path / "mask.png")
    write_palette_png(path, indices)

    decoded = decode_file(path)

    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.array(Image.open(path)))
    np.testing.assert_array_equal(decoded, indices)


def test_single_channel_index_png_is_read_as_is(tmp_path):
    indices = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9) % 12
    indices[0, 0] = IGNORE_LABEL
    path = str(tmp_path / "camvid.png")
    Image.fromarray(indices, mode="L").save(path)

    np.testing.assert_array_equal(decode_file(path), indices)


def test_unknown_colour_is_an_error_naming_the_file(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[3, 4] = (10, 200, 30)  # Not a VOC colour.
    path = str(tmp_path / "bad_colour.png")
    Image.fromarray(rgb, mode="RGB").save(path)

    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_colour.png"):
        decode_file(path)


def test_decoding_runs_inside_parallel_dataset_map(tmp_path):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        write_palette_png(paths[-1], np.full((5, 6), i * 5, np.uint8))
    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode_mask(tf.io.read_file(p), p),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    assert [int(m[0, 0]) for m in dataset] == [0, 5, 10, 15]


def test_every_real_voc_mask_decodes_exactly(voc_sample_dir):
    paths = sorted(
        glob.glob(os.path.join(voc_sample_dir, "SegmentationClass", "*.png"))
    )
    assert len(paths) == 40
    seen = set()
    for path in paths:
        expected = np.array(Image.open(path))
        decoded = decode_file(path)
        np.testing.assert_array_equal(decoded, expected, err_msg=path)
        seen.update(np.unique(decoded).tolist())
    assert IGNORE_LABEL in seen and seen <= set(range(21)) | {IGNORE_LABEL}
