"""Joint image/mask geometry for training and evaluation.

Every random draw is made once and applied to the image *and* its mask, so the
two never drift apart. Masks are only ever resized with nearest neighbour and
padded with 255 (void), so augmentation cannot invent a label value that was
not in the mask: the padding is simply not scored.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.backend import tf
from common.constants import IGNORE_LABEL, IMAGE_MEAN


def pad_image(
    image: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> tf.Tensor:
    """Pad a float image at the bottom/right to (height, width) with `pad_value`.

    `pad_value` has one value per band: `IMAGE_MEAN` for RGB, the training
    images' band means otherwise (`common.voc.ImageFormat.pad_value`).
    """
    shape = tf.shape(image)
    paddings = [[0, height - shape[0]], [0, width - shape[1]], [0, 0]]
    mean = tf.constant(pad_value, tf.float32)
    return tf.pad(image - mean, paddings) + mean


def pad_mask(mask: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Pad a mask at the bottom/right to (height, width) with 255 (void)."""
    shape = tf.shape(mask)
    paddings = [[0, height - shape[0]], [0, width - shape[1]]]
    return tf.pad(mask, paddings, constant_values=IGNORE_LABEL)


def random_scale_crop_flip(
    image: tf.Tensor,
    mask: tf.Tensor,
    crop_size: int,
    scale_range: tuple[float, float],
    seeds: tf.Tensor,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> tuple[tf.Tensor, tf.Tensor]:
    """DeepLab's training augmentation, drawn once for image and mask.

    1. scale both by one factor from `scale_range` (image bilinear, mask nearest);
    2. pad up to `crop_size` (image with `pad_value`, the mean, mask with 255);
    3. crop one random `crop_size` x `crop_size` window from both;
    4. flip both left-right with probability 1/2.

    image: uint8 or float32 `(H, W, bands)` (bands = `len(pad_value)`, 3 for
    RGB), mask: uint8 `(H, W)`, seeds: int64 `(2,)` for the stateless random
    ops. Returns float32 `(crop, crop, bands)` and uint8 `(crop, crop)`.
    """
    scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seeds, 4)
    )
    scale = tf.random.stateless_uniform([], scale_seed, *scale_range)
    size = tf.cast(tf.round(tf.cast(tf.shape(mask), tf.float32) * scale), tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]

    height = tf.maximum(size[0], crop_size)
    width = tf.maximum(size[1], crop_size)
    image = pad_image(image, height, width, pad_value)
    mask = pad_mask(mask, height, width)

    top = tf.random.stateless_uniform([], y_seed, 0, height - crop_size + 1, tf.int32)
    left = tf.random.stateless_uniform([], x_seed, 0, width - crop_size + 1, tf.int32)
    image = image[top : top + crop_size, left : left + crop_size]
    mask = mask[top : top + crop_size, left : left + crop_size]

    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    image = tf.ensure_shape(image, (crop_size, crop_size, len(pad_value)))
    return image, tf.ensure_shape(mask, (crop_size, crop_size))


def center_crop(mask: tf.Tensor, margin: int) -> tf.Tensor:
    """Remove `margin` pixels from every side of a `(H, W, ...)` tensor."""
    return mask[margin:-margin, margin:-margin] if margin else mask


def pad_for_evaluation(
    image: tf.Tensor,
    mask: tf.Tensor,
    input_size: tuple[int, int],
    label_margin: int = 0,
    pad_value: Sequence[float] = IMAGE_MEAN,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pad one example to the fixed evaluation size, keeping every original pixel.

    The image becomes `input_size` (mirrored outwards by `label_margin` first,
    then padded with `pad_value`, the mean, at the bottom/right), with
    `len(pad_value)` bands; the mask becomes `input_size` minus
    the margins, padded with 255, so that it lines up with a network output that
    is `2 * label_margin` smaller than its input.
    """
    image = tf.cast(image, tf.float32)
    if label_margin:
        margins = [[label_margin, label_margin], [label_margin, label_margin], [0, 0]]
        image = tf.pad(image, margins, mode="REFLECT")
    height, width = input_size
    image = pad_image(image, height, width, pad_value)
    mask = pad_mask(mask, height - 2 * label_margin, width - 2 * label_margin)
    image = tf.ensure_shape(image, (height, width, len(pad_value)))
    return image, tf.ensure_shape(
        mask, (height - 2 * label_margin, width - 2 * label_margin)
    )
