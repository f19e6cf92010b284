"""Keras building blocks shared by two or more of the training scripts."""

from __future__ import annotations

import keras
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
