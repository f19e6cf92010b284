"""Keras building blocks shared by two or more of the training scripts."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


def conv_bn_relu(
    x,
    filters: int,
    kernel_size: int = 3,
    *,
    padding: str = "same",
    dilation_rate: int = 1,
    batch_norm: bool = True,
    name: str | None = None,
):
    """Conv2D -> (BatchNormalization) -> ReLU, the unit every encoder here repeats.

    With batch norm the convolution has no bias: BN's own offset (beta) would
    cancel it, so it would only add parameters.
    """
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding=padding,
        dilation_rate=dilation_rate,
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn" if name else None)(x)
    return layers.ReLU(name=f"{name}_relu" if name else None)(x)


@keras.saving.register_keras_serializable(package="segmentation")
class CenterCropToMatch(layers.Layer):
    """Crop `inputs[0]` to the height and width of `inputs[1]`, keeping the centre.

    U-Net's "copy and crop" (Ronneberger et al. 2015, Fig. 1): with unpadded
    convolutions the encoder's feature map is larger than the decoder's, so its
    border is cut off before concatenation. Works with dynamic sizes, where
    `keras.layers.CenterCrop` needs them fixed when the model is built.

    Example: a (1, 64, 64, 8) tensor cropped to match a (1, 56, 56, 16) one
    loses 4 rows/columns on each side and comes out as (1, 56, 56, 8).
    """

    def call(self, inputs):
        tensor, reference = inputs
        height, width = ops.shape(tensor)[1], ops.shape(tensor)[2]
        target_height, target_width = ops.shape(reference)[1], ops.shape(reference)[2]
        top = (height - target_height) // 2
        left = (width - target_width) // 2
        return tensor[:, top : top + target_height, left : left + target_width]

    def compute_output_shape(self, input_shapes):
        tensor_shape, reference_shape = input_shapes
        return (
            tensor_shape[0],
            reference_shape[1],
            reference_shape[2],
            tensor_shape[3],
        )


# --------------------------------------------------------------------------
# Bilinear upsampling initializer (FCN: Long et al. 2015, Sec. 3.3)
# --------------------------------------------------------------------------


def bilinear_kernel(size: int) -> np.ndarray:
    """Return the `(size, size)` float32 weights of bilinear interpolation.

    A transposed convolution with this kernel, stride `factor = (size + 1) // 2`
    and `padding="same"` upsamples by `factor` exactly as
    `tf.image.resize(..., method="bilinear")` does (half-pixel centres) away
    from the border. FCN uses `size = 2 * factor`: 4 for x2, 16 for x8, 64 for
    x32. Example: `bilinear_kernel(4)` is the outer product of
    `[0.25, 0.75, 0.75, 0.25]` with itself.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1 - np.abs(np.arange(size) - center) / factor  # (size,)
    return np.outer(taps, taps).astype("float32")


@keras.saving.register_keras_serializable(package="segmentation")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialise a `Conv2DTranspose` kernel to per-channel bilinear interpolation.

    "Upsampling is backwards strided convolution" (FCN, Sec. 3.3): with this
    kernel, channel `c` of the output is the bilinear upsampling of channel `c`
    of the input, and no channel leaks into another (zeros off the diagonal).
    The layer stays learnable unless frozen. Everything the kernel needs comes
    from its shape, so the saved config is empty, where
    `keras.initializers.Constant(array)` would write the whole array into it.

    The kernel shape is `(size, size, channels, channels)` (Keras'
    `Conv2DTranspose` layout: height, width, output channels, input channels).
    """

    def __call__(self, shape, dtype=None):
        height, width, out_channels, in_channels = shape
        if height != width or out_channels != in_channels:
            raise ValueError(
                "BilinearUpsampling needs a square kernel with as many output as "
                f"input channels, got shape {tuple(shape)}."
            )
        kernel = np.zeros(shape, dtype="float32")
        diagonal = np.arange(in_channels)
        kernel[:, :, diagonal, diagonal] = bilinear_kernel(height)[:, :, np.newaxis]
        return ops.convert_to_tensor(kernel, dtype=dtype or keras.backend.floatx())

    def get_config(self) -> dict:
        return {}
