"""The layers of `common/layers.py` on every Keras backend, against TensorFlow.

CI runs this file with Keras on TensorFlow and again with `KERAS_BACKEND=jax`.
The references are TensorFlow's own kernels, called directly, so under JAX a
test compares the Keras layer running on JAX with what TensorFlow computes
(`tf.nn.max_pool_with_argmax` for SegNet's pooling, `tf.image.resize` for
`ResizeLike`): the numbers the layers gave when they were written in `tf.`.
"""

from __future__ import annotations

import os

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from common import backend, layers
from common.layers import (
    AtrousConv2D,
    MatmulConv2D,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    ResizeLike,
)

pytestmark = pytest.mark.backends


def tensorflow_gradient(function, x: np.ndarray) -> np.ndarray:
    """`d sum(function(x)) / dx` by TensorFlow, whatever backend Keras runs on."""
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        total = tf.reduce_sum(function(tensor))
    return tape.gradient(total, tensor).numpy()


def gradient(function, x: np.ndarray) -> np.ndarray:
    """`d sum(function(x)) / dx` by the backend Keras runs on."""
    if backend.name() == "tensorflow":
        return tensorflow_gradient(function, x)
    if backend.name() != "jax":
        pytest.skip(f"no gradient helper for {backend.name()} yet")
    import jax

    return np.asarray(jax.grad(lambda tensor: ops.sum(function(tensor)))(x))


def pool_unpool(x, pool_size: int = 2, values=None):
    """Pool `x`, then unpool `values` (default: the pooled maxima) to x's shape."""
    pooled, indices = MaxPoolingWithArgmax2D(pool_size, pool_size)(x)
    values = pooled if values is None else values
    return MaxUnpooling2D(pool_size)([values, indices, x])


def tensorflow_pool_unpool(x, pool_size: int = 2, values=None) -> tf.Tensor:
    """The same with TensorFlow's kernel: flat indices, batch included, scattered."""
    pooled, indices = tf.nn.max_pool_with_argmax(
        x, pool_size, pool_size, "SAME", include_batch_in_index=True
    )
    values = pooled if values is None else values
    flat = tf.scatter_nd(
        tf.reshape(indices, (-1, 1)),
        tf.reshape(values, (-1,)),
        [int(np.prod(x.shape))],
    )
    return tf.reshape(flat, x.shape)


def assert_same_as_tensorflow(x: np.ndarray, pool_size: int) -> None:
    """Pooled values, where each one unpools to, and gradients, all exactly equal.

    Distinct decoder values (1, 2, 3, ...) show where every pooled position
    goes back to; the gradient shows which input element each window reads.
    """
    pooled, _ = MaxPoolingWithArgmax2D(pool_size, pool_size)(x)
    expected, _ = tf.nn.max_pool_with_argmax(x, pool_size, pool_size, "SAME")
    np.testing.assert_array_equal(ops.convert_to_numpy(pooled), expected)
    # Signed zeros too: the value of the winning element, not just any maximum.
    np.testing.assert_array_equal(
        np.signbit(ops.convert_to_numpy(pooled)), np.signbit(expected)
    )
    marks = np.arange(1, expected.numpy().size + 1, dtype="float32")
    marks = marks.reshape(expected.shape)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(pool_unpool(x, pool_size, marks)),
        tensorflow_pool_unpool(x, pool_size, marks),
    )
    weights = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    np.testing.assert_array_equal(
        gradient(lambda t: pool_unpool(t, pool_size) * weights, x),
        tensorflow_gradient(
            lambda t: tensorflow_pool_unpool(t, pool_size) * weights, x
        ),
    )


@pytest.mark.parametrize("pool_size", [2, 3])
@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (3, 5, 7, 2), (2, 45, 61, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_pooling_and_unpooling_equal_max_pool_with_argmax(shape, pool_size, ties):
    """Rounded ReLU-like inputs have many equal maxima in a window (all zeros):
    the first in row-major order must win, as in TensorFlow's kernel."""
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    if ties:
        x = np.maximum(np.round(x), 0)
    assert_same_as_tensorflow(x, pool_size)


def test_plus_and_minus_zero_tie_and_the_first_wins():
    """Keras' argmax ranks -0 below +0; TensorFlow's kernel (and SegNet) do not."""
    windows = [[[-1.0, -0.0], [0.0, -3.0]], [[-1.0, 0.0], [-0.0, -3.0]]]
    x = np.concatenate(windows, axis=1)[None, :, :, None].astype("float32")
    _, indices = MaxPoolingWithArgmax2D()(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(indices).ravel(), [1, 1])
    assert_same_as_tensorflow(x, 2)


@pytest.mark.parametrize("pool_size", [2, 3])
def test_gradient_of_a_tied_window_goes_to_one_element(pool_size):
    """All equal: one element gets the whole gradient, as in TensorFlow, where
    the maximum of JAX would share it out among the ties."""
    x = np.ones((2, 5, 7, 3), "float32")

    def pooled(t):
        return MaxPoolingWithArgmax2D(pool_size, pool_size)(t)[0]

    grads = gradient(pooled, x)
    np.testing.assert_array_equal(np.unique(grads), [0.0, 1.0])
    assert grads.sum() == np.prod(pooled(x).shape)
    expected = tensorflow_gradient(
        lambda t: tf.nn.max_pool_with_argmax(t, pool_size, pool_size, "SAME")[0], x
    )
    np.testing.assert_array_equal(grads, expected)


def test_odd_sizes_pool_to_the_ceiling_and_unpool_to_the_input_size():
    x = np.random.default_rng(2).normal(size=(2, 45, 61, 3)).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D()(x)
    assert tuple(pooled.shape) == tuple(indices.shape) == (2, 23, 31, 3)
    assert tuple(pool_unpool(x).shape) == x.shape


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_pads_with_a_finite_value_that_never_wins(dtype):
    """Under a mixed-precision policy the layers run in bfloat16 or float16.

    Values near the dtype's lowest finite one, at the padded border of odd
    sizes (pool size 3 pads on top and at the left too), must still win their
    windows, and nothing may turn into inf or NaN on the way.
    """
    lowest = float(ml_dtypes.finfo(dtype).min)
    rng = np.random.default_rng(3)
    x = rng.uniform(lowest, lowest / 2, size=(2, 7, 9, 2)).astype(dtype)
    pooled, indices = MaxPoolingWithArgmax2D(3, 3, dtype=dtype)(x)
    unpooled = MaxUnpooling2D(3, dtype=dtype)([pooled, indices, x])
    assert keras.backend.standardize_dtype(unpooled.dtype) == dtype
    pooled = ops.convert_to_numpy(ops.cast(pooled, "float32"))
    unpooled = ops.convert_to_numpy(ops.cast(unpooled, "float32"))
    assert np.isfinite(pooled).all() and np.isfinite(unpooled).all()
    x32 = x.astype("float32")
    expected, _ = tf.nn.max_pool_with_argmax(x32, 3, 3, "SAME")
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(unpooled, tensorflow_pool_unpool(x32, 3))


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize(
    "source, target",
    [((2, 6, 5, 3), (13, 17)), ((2, 30, 20, 3), (7, 9)), ((1, 1, 1, 4), (5, 6))],
)
def test_resize_like_equals_tf_image_resize(source, target, interpolation):
    """Up, down and from 1x1 (DeepLab's image pooling), half-pixel centres."""
    tensor = np.random.default_rng(4).normal(size=source).astype("float32")
    reference = np.zeros((source[0], *target, 1), "float32")
    resized = ResizeLike(interpolation=interpolation)([tensor, reference])
    expected = tf.image.resize(tensor, target, method=interpolation)
    np.testing.assert_allclose(ops.convert_to_numpy(resized), expected, atol=1e-5)


@pytest.mark.parametrize(
    "conv, dilation_rate", [(MatmulConv2D, 1), (AtrousConv2D, 12), (AtrousConv2D, 2)]
)
def test_conv_layers_equal_conv2d_and_use_the_product_where_it_was_measured(
    conv, dilation_rate, monkeypatch
):
    """The product: fc6's shape on a TensorFlow or JAX CPU, atrous on TensorFlow's."""
    calls = []
    product = layers.shifted_copies_product
    monkeypatch.setattr(
        layers,
        "shifted_copies_product",
        lambda *args: calls.append(args) or product(*args),
    )
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype("float32")
    layer = conv(4, 3, padding="same", dilation_rate=dilation_rate)
    plain = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=dilation_rate)
    outputs = layer(x)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(outputs), ops.convert_to_numpy(plain(x)), atol=1e-5
    )
    on_cpu = not backend.has_accelerator()
    # Rate 2 on an 8x8 map leaves 4-pixel sub-images: the product is faster.
    backends = ("tensorflow", "jax") if conv is MatmulConv2D else ("tensorflow",)
    assert bool(calls) == (on_cpu and backend.name() in backends)


def test_model_with_every_ported_layer_saves_and_reloads(tmp_path):
    inputs = keras.Input((None, None, 2))
    x = AtrousConv2D(3, 3, padding="same", dilation_rate=2)(inputs)
    pooled, indices = MaxPoolingWithArgmax2D(3, 3, name="pool")(x)
    y = MatmulConv2D(3, 3, padding="same")(pooled)
    unpooled = MaxUnpooling2D(3, name="unpool")([y, indices, x])
    resized = ResizeLike(name="resize")([pooled, inputs])
    model = keras.Model(inputs, [unpooled, resized])
    path = os.path.join(tmp_path, "layers.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    images = np.random.default_rng(6).normal(size=(2, 13, 17, 2)).astype("float32")
    for output, expected in zip(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0)
    ):
        assert output.shape == (2, 13, 17, 3)
        np.testing.assert_array_equal(output, expected)
