"""Keras building blocks shared by two or more of the training scripts."""

from __future__ import annotations

import keras
import tensorflow as tf
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
# Atrous (dilated) networks: DeepLab v1-v3+ (deeplab_train.py)
# --------------------------------------------------------------------------


def separable_conv_bn(
    x,
    filters: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    dilation_rate: int = 1,
    relu_inside: bool = True,
    epsilon: float = 1e-3,
    name: str,
):
    """Depthwise-separable convolution with batch norm (DeepLab v3+, Sec. 3.2).

    A depthwise `kernel_size` convolution (one filter per channel, optionally
    atrous) followed by a 1x1 "pointwise" convolution that mixes channels:
    about `kernel_size**2` times fewer weights and multiply-adds than a full
    convolution with the same receptive field.

    `relu_inside=True` is the block of the v3+ ASPP and decoder:
    depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU. `relu_inside=False` is
    the pre-activation form inside the Xception backbone's residual units
    (Chollet 2017, Fig. 5): ReLU -> depthwise -> BN -> pointwise -> BN, the
    residual sum coming after the last BN. Layer names are `{name}_depthwise`,
    `{name}_depthwise_BN`, `{name}_pointwise`, `{name}_pointwise_BN`, as in
    the Keras ports of the DeepLab model zoo.
    """
    if not relu_inside:
        x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        dilation_rate=dilation_rate,
        padding="same",
        use_bias=False,
        name=f"{name}_depthwise",
    )(x)
    x = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_depthwise_BN")(x)
    if relu_inside:
        x = layers.ReLU(name=f"{name}_depthwise_relu")(x)
    x = layers.Conv2D(
        filters,
        1,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_pointwise",
    )(x)
    x = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_pointwise_BN")(x)
    if relu_inside:
        x = layers.ReLU(name=f"{name}_pointwise_relu")(x)
    return x


@keras.saving.register_keras_serializable(package="segmentation")
class ResizeLike(layers.Layer):
    """Resize `inputs[0]` to the height and width of `inputs[1]` (any sizes).

    DeepLab resizes three times: the image-pooling features back to the
    feature map, the encoder output to the decoder's stride-4 features, and the
    logits to the input image. Taking the target size from a tensor at run
    time, instead of a factor fixed when the model is built, lets one model
    take 513x513, 512x512 and 500x375 images alike. Keras resizes with
    half-pixel centres (`align_corners=False`).

    Example: a (2, 33, 33, 21) tensor resized like a (2, 513, 513, 3) one
    comes out as (2, 513, 513, 21).
    """

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        tensor, reference = inputs
        # tf.image.resize, not keras.ops.image.resize: the latter checks
        # `size > 0` in Python, which fails when the size is only known at run time.
        size = ops.shape(reference)[1:3]
        resized = tf.image.resize(tensor, size, method=self.interpolation)
        return ops.cast(resized, self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        tensor_shape, reference_shape = input_shapes
        return (
            tensor_shape[0],
            reference_shape[1],
            reference_shape[2],
            tensor_shape[3],
        )

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="segmentation")
class CaffeNormalization(layers.Layer):
    """RGB in [0, 255] -> BGR minus the ImageNet mean: Caffe-trained backbones.

    VGG-16 and ResNet-50 in `keras.applications` were converted from Caffe and
    expect `keras.applications.vgg16.preprocess_input` (mode "caffe"): channels
    flipped to BGR and the mean pixel subtracted, no scaling. Doing it inside
    the model means `model.predict` on a raw image sees what training saw.
    """

    def __init__(self, mean_bgr=(103.939, 116.779, 123.68), **kwargs):
        super().__init__(**kwargs)
        self.mean_bgr = tuple(float(value) for value in mean_bgr)

    def call(self, images):
        bgr = ops.flip(ops.cast(images, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(self.mean_bgr, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean_bgr": self.mean_bgr}
