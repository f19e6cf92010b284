"""MaxPoolingWithArgmax2D and MaxUnpooling2D: SegNet's upsampling, pinned exactly."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D

# Even, odd and CamVid-like (45 rows = 360 after three poolings) sizes, batch > 1.
SHAPES = [(2, 4, 6, 3), (3, 5, 7, 2), (2, 45, 60, 4), (1, 1, 1, 1)]


def max_positions(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the maximum of every 2x2 window, windows cut at the border."""
    batch, height, width, channels = x.shape
    mask = np.zeros(x.shape, bool)
    for b in range(batch):
        for top in range(0, height, 2):
            for left in range(0, width, 2):
                for c in range(channels):
                    window = x[b, top : top + 2, left : left + 2, c]
                    y, x_ = np.unravel_index(np.argmax(window), window.shape)
                    mask[b, top + y, left + x_, c] = True
    return mask


def pool_unpool(x):
    pooled, indices = MaxPoolingWithArgmax2D()(x)
    return MaxUnpooling2D()([pooled, indices, x])


@pytest.mark.parametrize("shape", SHAPES)
def test_unpooling_puts_each_maximum_back_and_zeros_elsewhere(shape):
    # Continuous random values: ties have probability zero.
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    unpooled = pool_unpool(tf.constant(x)).numpy()
    expected = max_positions(x)
    assert unpooled.shape == x.shape
    np.testing.assert_array_equal(unpooled != 0, expected)
    np.testing.assert_array_equal(unpooled[expected], x[expected])


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradient_reaches_the_maxima_only(shape):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    weights = rng.normal(size=shape).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(pool_unpool(x) * weights)
    gradient = tape.gradient(total, x).numpy()
    expected = np.where(max_positions(x.numpy()), weights, 0.0)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)


def test_docstring_example():
    x = tf.constant([[1.0, 5.0, 2.0], [4.0, 3.0, 9.0]])[None, :, :, None]
    pooled, indices = MaxPoolingWithArgmax2D()(x)
    np.testing.assert_array_equal(pooled.numpy()[0, :, :, 0], [[5, 9]])
    np.testing.assert_array_equal(indices.numpy()[0, :, :, 0], [[1, 5]])
    unpooled = MaxUnpooling2D()([pooled, indices, x])
    np.testing.assert_array_equal(unpooled.numpy()[0, :, :, 0], [[0, 5, 0], [0, 0, 9]])


def small_unpooling_model() -> keras.Model:
    """Conv -> pool with indices -> conv -> unpool, with dynamic batch and size."""
    inputs = keras.Input((None, None, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    pooled, indices = MaxPoolingWithArgmax2D(name="pool")(x)
    y = keras.layers.Conv2D(3, 1)(pooled)
    outputs = MaxUnpooling2D(name="unpool")([y, indices, x])
    return keras.Model(inputs, outputs)


def test_model_with_dynamic_batch_and_size_saves_and_reloads(tmp_path):
    model = small_unpooling_model()
    pooled, indices = model.get_layer("pool").output
    assert indices.dtype == "int64"
    assert model.output_shape == (None, None, None, 3)
    path = os.path.join(tmp_path, "unpool.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    rng = np.random.default_rng(2)
    for shape in [(1, 9, 13, 2), (4, 16, 6, 2)]:
        images = rng.normal(size=shape).astype("float32")
        outputs = model.predict(images, verbose=0)
        assert outputs.shape == shape[:3] + (3,)
        np.testing.assert_array_equal(reloaded.predict(images, verbose=0), outputs)


def test_get_config_round_trip():
    layer = MaxPoolingWithArgmax2D(pool_size=3, strides=3, name="p")
    clone = MaxPoolingWithArgmax2D.from_config(layer.get_config())
    assert (clone.pool_size, clone.strides, clone.name) == (3, 3, "p")
    assert MaxUnpooling2D.from_config(MaxUnpooling2D(name="u").get_config()).name == "u"


# --------------------------------------------------------------------------
# SegNet's pooling indices from built-in ops: the same numbers as TF's kernel
# --------------------------------------------------------------------------


@pytest.mark.parametrize("pool_size", [2, 3])
@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (3, 5, 7, 2), (2, 45, 61, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_pooling_equals_max_pool_with_argmax(shape, pool_size, ties):
    """Values, indices and gradients as `tf.nn.max_pool_with_argmax`, ties too.

    Rounded ReLU-like inputs have many equal maxima in a window (all zeros):
    the first in row-major order must win, as in TensorFlow's kernel.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    if ties:
        x = np.maximum(np.round(x), 0)
    x = tf.constant(x)
    weights = tf.constant(rng.normal(size=(1,) + shape[1:]).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        expected, expected_indices = tf.nn.max_pool_with_argmax(
            x, pool_size, pool_size, "SAME", include_batch_in_index=True
        )
        pooled, indices = MaxPoolingWithArgmax2D(pool_size, pool_size)(x)
        unpooled = MaxUnpooling2D()([pooled, indices, x])
        loss = tf.reduce_sum(unpooled * weights)
        expected_loss = tf.reduce_sum(
            tf.reshape(
                tf.scatter_nd(
                    tf.reshape(expected_indices, (-1, 1)),
                    tf.reshape(expected, (-1,)),
                    [int(np.prod(shape))],
                ),
                shape,
            )
            * weights
        )
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    assert indices.dtype == tf.int64
    np.testing.assert_array_equal(
        tape.gradient(loss, x), tape.gradient(expected_loss, x)
    )


def test_overlapping_windows_are_refused():
    with pytest.raises(ValueError, match="must equal pool_size"):
        MaxPoolingWithArgmax2D(pool_size=3, strides=2)
