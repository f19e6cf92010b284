"""common/augment.py: one augmentation for the tf.data pipeline and the cache.

The `tf.data` path runs it with `tf.experimental.numpy` inside a graph, the
cache with `keras.ops` on the accelerator; both must give the same pixels for
the same draws, and those pixels must be `tf.image.resize`'s.
"""

import numpy as np
import pytest
from keras import ops

from common import augment
from common.backend import tf
from common.constants import IGNORE_LABEL, IMAGE_MEAN

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 20, 30, 3)).astype(np.uint8)
MASKS = RNG.integers(0, 21, (3, 20, 30)).astype(np.uint8)
MASKS[:, :4] = IGNORE_LABEL
DRAWS = RNG.random((3, augment.DRAWS)).astype(np.float32)
CROP, SCALES = 16, (0.5, 2.0)

pytestmark = pytest.mark.backends  # The graph path, too, under JAX.


@tf.function
def in_a_graph(images, masks, draws):
    """As `voc.make_dataset`'s map: shapes known only at run time."""
    return augment.random_scale_crop_flip(
        images,
        masks,
        tf.unstack(tf.shape(masks)[1:]),
        draws,
        CROP,
        SCALES,
        IMAGE_MEAN,
        tf.experimental.numpy,
    )


def on_the_device(images, masks, draws):
    """As `cache.TrainingBatches`: keras.ops on this backend."""
    return augment.random_scale_crop_flip(
        ops.convert_to_tensor(images),
        ops.convert_to_tensor(masks),
        masks.shape[1:],
        ops.convert_to_tensor(draws),
        CROP,
        SCALES,
        IMAGE_MEAN,
        ops,
    )


def test_the_graph_and_keras_ops_give_the_same_pixels_for_the_same_draws():
    graph_images, graph_masks = in_a_graph(
        tf.constant(IMAGES), tf.constant(MASKS), tf.constant(DRAWS)
    )
    device_images, device_masks = on_the_device(IMAGES, MASKS, DRAWS)
    np.testing.assert_array_equal(
        graph_masks.numpy(), ops.convert_to_numpy(device_masks)
    )
    np.testing.assert_allclose(
        graph_images.numpy(), ops.convert_to_numpy(device_images), atol=1e-3
    )
    assert graph_masks.dtype == tf.int32 and graph_images.dtype == tf.float32


@pytest.mark.parametrize("draws", [(0.9, 0.3, 0.7, 0.2), (0.12, 0.0, 0.0, 0.9)])
def test_a_crop_is_tf_image_resize_cropped_and_flipped(draws):
    """Scale, then the window the draws name, as the old per-image code did."""
    draws = np.array([draws], np.float32)
    images, masks = on_the_device(IMAGES[:1], MASKS[:1], draws)
    scale = SCALES[0] + draws[0, 0] * (SCALES[1] - SCALES[0])
    size = np.floor(np.array([20, 30]) * scale + 0.5).astype(int)
    resized = tf.image.resize(IMAGES[0].astype(np.float32), size).numpy()
    labels = tf.image.resize(MASKS[0][..., None], size, "nearest").numpy()[..., 0]
    padded = np.full(
        (max(size[0], CROP), max(size[1], CROP), 3), IMAGE_MEAN, np.float32
    )
    padded[: size[0], : size[1]] = resized
    padded_labels = np.full(padded.shape[:2], IGNORE_LABEL, np.int32)
    padded_labels[: size[0], : size[1]] = labels
    top, left = (
        int(draw * (length - CROP + 1))
        for draw, length in zip(draws[0, 1:3], padded.shape)
    )
    window = (slice(top, top + CROP), slice(left, left + CROP))
    flip = slice(None, None, -1 if draws[0, 3] < 0.5 else 1)
    expected_labels = padded_labels[window][:, flip]
    np.testing.assert_array_equal(ops.convert_to_numpy(masks)[0], expected_labels)
    np.testing.assert_allclose(
        ops.convert_to_numpy(images)[0], padded[window][:, flip], atol=1e-3
    )


def test_evaluation_padding_is_the_same_one_image_in_a_graph_or_a_batch():
    @tf.function
    def one_in_a_graph(image, mask):
        return augment.pad_for_evaluation(
            image, mask, tf.unstack(tf.shape(mask)), (32, 40), tf.experimental.numpy, 2
        )

    batch_images, batch_masks = augment.pad_for_evaluation(
        ops.convert_to_tensor(IMAGES),
        ops.convert_to_tensor(MASKS),
        (20, 30),
        (32, 40),
        ops,
        2,
    )
    image, mask = one_in_a_graph(tf.constant(IMAGES[1]), tf.constant(MASKS[1]))
    np.testing.assert_array_equal(mask.numpy(), ops.convert_to_numpy(batch_masks)[1])
    np.testing.assert_array_equal(image.numpy(), ops.convert_to_numpy(batch_images)[1])
    assert mask.shape == (28, 36) and image.shape == (32, 40, 3)
    assert (mask.numpy()[20:] == IGNORE_LABEL).all()
    # Mirrored by the margin, then the mean: the margin's pixels are the image's.
    np.testing.assert_array_equal(image.numpy()[0, 2:32], IMAGES[1, 2, :30])
    np.testing.assert_allclose(image.numpy()[-1, -1], IMAGE_MEAN)
