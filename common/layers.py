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
# Pooling with indices and unpooling (SegNet)
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="segmentation")
class MaxPoolingWithArgmax2D(layers.Layer):
    """Max pooling that also returns where each maximum came from.

    SegNet (Badrinarayanan et al. 2017, Sec. 3) stores these "max-pooling
    indices" in the encoder so that the decoder can put every value back where
    it was (`MaxUnpooling2D`). Returns `(pooled, indices)`: `pooled` is
    `(batch, ceil(h/2), ceil(w/2), channels)` like `MaxPooling2D(2,
    padding="same")`, and `indices` (int64, same shape) holds, for every output
    value, the flat position `((b * h + y) * w + x) * channels + c` of its
    maximum in the input. The batch is part of the index, so a batch of any
    size unpools without extra bookkeeping. "same" padding makes odd sizes
    work: the last window of an odd row or column holds only one pixel.

    Example, one image, one channel, 2x3 input (channels dropped below):

        x = [[1, 5, 2],        pooled  = [[5, 9]]
             [4, 3, 9]]        indices = [[1, 5]]   (5 is at x[0, 1], 9 at x[1, 2])
    """

    def __init__(self, pool_size: int = 2, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides

    def call(self, inputs):
        pooled, indices = tf.nn.max_pool_with_argmax(
            inputs,
            ksize=self.pool_size,
            strides=self.strides,
            padding="SAME",
            include_batch_in_index=True,
        )
        return pooled, indices

    def compute_output_spec(self, inputs):
        batch, height, width, channels = inputs.shape
        shape = (
            batch,
            None if height is None else -(-height // self.strides),
            None if width is None else -(-width // self.strides),
            channels,
        )
        return (
            keras.KerasTensor(shape, dtype=inputs.dtype),
            keras.KerasTensor(shape, dtype="int64"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides)
        return config


@keras.saving.register_keras_serializable(package="segmentation")
class MaxUnpooling2D(layers.Layer):
    """Put each value back at the position its max-pooling index records.

    SegNet's decoder upsampling (Badrinarayanan et al. 2017, Sec. 3, Fig. 3):
    the output is zero everywhere except at the positions of the encoder's
    maxima, which receive the decoder's values ("sparse upsampling"); the
    convolutions that follow densify it. Nothing is learned, and boundaries
    stay where the encoder saw them.

    Called on `[values, indices, before_pooling]`: `values` and `indices` have
    the shape of `MaxPoolingWithArgmax2D`'s outputs, and `before_pooling` is
    the tensor that was pooled. Only its shape is used, so the output is
    `(batch, h, w, channels)` exactly, also when h or w is odd (45 rows pool
    to 23 and unpool to 45 again, not 46). Gradients flow to `values` only:
    each output position passes its gradient back to the value it came from.

    Example, continuing `MaxPoolingWithArgmax2D`'s (channels dropped):

        values  = [[5, 9]]    ->   [[0, 5, 0],
        indices = [[1, 5]]          [0, 0, 9]]   (the 2x3 shape of x)
    """

    def call(self, inputs):
        values, indices, before_pooling = inputs
        output_shape = tf.shape(before_pooling, out_type=tf.int64)
        # The indices count the batch too, so one flat scatter does every image.
        flat = tf.scatter_nd(
            tf.reshape(indices, (-1, 1)),
            tf.reshape(values, (-1,)),
            shape=tf.reduce_prod(output_shape, keepdims=True),
        )
        return tf.reshape(flat, output_shape)

    def compute_output_shape(self, input_shapes):
        _, _, before_pooling_shape = input_shapes
        return tuple(before_pooling_shape)
