"""U-Net architecture as in Ronneberger et al. 2015, Fig. 1."""

import keras
import numpy as np
import pytest

from common.layers import CropToMatch
from unet_train import (
    build_unet,
    label_margin,
    valid_output_size,
    valid_padding_input_size,
)


@pytest.mark.backends
def test_paper_unet_parameter_count_and_output_size():
    model = build_unet(2, input_shape=(572, 572, 1), padding="valid", batch_norm=False)
    assert model.count_params() == 31_030_658
    assert model.output_shape == (None, 388, 388, 2)
    # Fig. 1: 64 channels at the top, 1024 at the bottom, upconvs halve channels.
    assert model.get_layer("down1_conv1").filters == 64
    assert model.get_layer("bottleneck_conv2").filters == 1024
    assert model.get_layer("up4_upconv").filters == 512
    keras.backend.clear_session()


def test_valid_geometry():
    assert valid_output_size(572) == 388
    assert valid_output_size(573) is None  # 569 is odd before the first pooling
    assert label_margin() == 92
    assert valid_padding_input_size(500) == 508 and valid_output_size(508) == 324


@pytest.mark.parametrize("height, width", [(64, 96), (48, 80)])
def test_same_padding_keeps_the_input_size(height, width):
    model = build_unet(5, filters=(4, 8, 16, 32))
    logits = model(np.zeros((2, height, width, 3), np.float32))
    assert logits.shape == (2, height, width, 5)
    assert logits.dtype == "float32"


def test_valid_padding_on_a_small_tile():
    model = build_unet(3, padding="valid", filters=(4, 8, 16, 32))
    assert model(np.zeros((1, 188, 188, 3), np.float32)).shape == (1, 4, 4, 3)


def test_copy_and_crop_keeps_the_centre():
    tensor = np.arange(6 * 6, dtype=np.float32).reshape(1, 6, 6, 1)
    cropped = CropToMatch()([tensor, np.zeros((1, 2, 2, 3), np.float32)])
    np.testing.assert_array_equal(cropped[0, ..., 0], [[14, 15], [20, 21]])


def test_saved_unet_reloads_with_identical_logits(tmp_path):
    model = build_unet(4, padding="valid", filters=(4, 8, 16, 32))
    images = np.random.default_rng(0).uniform(0, 255, (1, 188, 188, 3))
    path = str(tmp_path / "unet.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        model.predict(images, verbose=0), reloaded.predict(images, verbose=0)
    )
