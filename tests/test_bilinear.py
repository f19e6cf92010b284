"""The bilinear upsampling initializer of `common.layers` (FCN, Sec. 3.3)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from common.layers import BilinearUpsampling, bilinear_kernel


def upsampling_layer(channels: int, factor: int) -> keras.layers.Conv2DTranspose:
    return keras.layers.Conv2DTranspose(
        channels,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
    )


def test_bilinear_kernel_values():
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(bilinear_kernel(4), np.outer(taps, taps))
    # Odd sizes peak at one tap (the reference's upsample_filt).
    np.testing.assert_allclose(
        bilinear_kernel(3), np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    )


@pytest.mark.backends
@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_transposed_conv_matches_tf_image_resize(factor):
    """Away from the border (where resize clamps and the conv sees zeros)."""
    rng = np.random.default_rng(factor)
    scores = rng.normal(size=(2, 6, 5, 3)).astype("float32")
    upsampled = ops.convert_to_numpy(upsampling_layer(3, factor)(scores))
    resized = tf.image.resize(
        scores, (6 * factor, 5 * factor), method="bilinear"
    ).numpy()
    assert upsampled.shape == resized.shape
    interior = np.s_[:, factor:-factor, factor:-factor]
    assert np.abs(upsampled[interior] - resized[interior]).max() < 1e-5


@pytest.mark.backends
def test_kernel_keeps_channels_apart():
    kernel = ops.convert_to_numpy(BilinearUpsampling()((4, 4, 3, 3)))
    for out_channel in range(3):
        for in_channel in range(3):
            expected = bilinear_kernel(4) if out_channel == in_channel else 0.0
            np.testing.assert_array_equal(
                kernel[:, :, out_channel, in_channel], expected
            )


def test_rejects_kernels_that_are_not_square_or_diagonal():
    with pytest.raises(ValueError, match="square kernel"):
        BilinearUpsampling()((4, 4, 3, 5))


@pytest.mark.backends
def test_layer_config_is_small_and_round_trips():
    """The config names the initializer; it does not carry the 64x64x21x21 array."""
    layer = upsampling_layer(21, 32)
    config = keras.layers.serialize(layer)
    assert len(json.dumps(config)) < 2000
    clone = keras.layers.deserialize(config)
    assert isinstance(clone.kernel_initializer, BilinearUpsampling)
    scores = np.random.default_rng(0).normal(size=(1, 2, 2, 21)).astype("float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(clone(scores)), ops.convert_to_numpy(layer(scores))
    )
