"""MaxPoolingWithArgmax2D and MaxUnpooling2D: SegNet's upsampling, pinned exactly.

Against a numpy reference, on every Keras backend; the comparisons with
TensorFlow's own kernel (ties, signed zeros, gradients, half precision) are in
`test_layers_backends.py`.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import ops

from common.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D

pytestmark = pytest.mark.backends

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
    unpooled = ops.convert_to_numpy(pool_unpool(x))
    expected = max_positions(x)
    assert unpooled.shape == x.shape
    np.testing.assert_array_equal(unpooled != 0, expected)
    np.testing.assert_array_equal(unpooled[expected], x[expected])


def test_docstring_example():
    x = np.array([[1.0, 5.0, 2.0], [4.0, 3.0, 9.0]], "float32")[None, :, :, None]
    pooled, indices = MaxPoolingWithArgmax2D()(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(pooled)[0, :, :, 0], [[5, 9]])
    np.testing.assert_array_equal(ops.convert_to_numpy(indices)[0, :, :, 0], [[1, 2]])
    unpooled = ops.convert_to_numpy(MaxUnpooling2D()([pooled, indices, x]))
    np.testing.assert_array_equal(unpooled[0, :, :, 0], [[0, 5, 0], [0, 0, 9]])


@pytest.mark.parametrize("pool_size", [2, 3])
def test_indices_are_positions_inside_the_window(pool_size):
    """`dy * pool_size + dx`, whatever the batch, row, column or channel."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 7, 8, 2)).astype("float32")
    _, indices = MaxPoolingWithArgmax2D(pool_size, pool_size)(x)
    indices = ops.convert_to_numpy(indices)
    # "same" pads (pool_size - side % pool_size) % pool_size, the smaller half first.
    totals = [-side % pool_size for side in (7, 8)]
    pads = [(total // 2, total - total // 2) for total in totals]
    padded = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-9)
    windows = padded.reshape(
        3, -1, pool_size, padded.shape[2] // pool_size, pool_size, 2
    )
    expected = windows.transpose(0, 1, 3, 5, 2, 4).reshape(*indices.shape, -1)
    np.testing.assert_array_equal(indices, np.argmax(expected, axis=-1))


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
    assert indices.dtype == "int32"
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
    unpooling = MaxUnpooling2D.from_config(MaxUnpooling2D(3, name="u").get_config())
    assert (unpooling.pool_size, unpooling.name) == (3, "u")


def test_config_saved_before_pool_size_existed_loads_as_two():
    """SegNet's .keras files from before have no `pool_size` in the unpooling."""
    config = MaxUnpooling2D(name="u").get_config()
    del config["pool_size"]
    assert MaxUnpooling2D.from_config(config).pool_size == 2


def test_unpooling_with_another_pool_size_is_refused():
    x = np.zeros((1, 9, 9, 1), "float32")
    pooled, indices = MaxPoolingWithArgmax2D(3, 3)(x)
    with pytest.raises(ValueError, match="pool_size"):
        MaxUnpooling2D()([pooled, indices, x])


def test_overlapping_windows_are_refused():
    with pytest.raises(ValueError, match="must equal pool_size"):
        MaxPoolingWithArgmax2D(pool_size=3, strides=2)
