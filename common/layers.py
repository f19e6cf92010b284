"""Keras building blocks shared by two or more of the training scripts."""

from __future__ import annotations

import keras
import ml_dtypes
import numpy as np
from keras import layers, ops

from common import backend
from common.backend import tf

# Momentum of the moving mean and variance of every batch norm layer that a
# script trains: `moving = momentum * moving + (1 - momentum) * batch`. With
# Keras' 0.99 (0.999 in keras.applications' MobileNetV2), after 300 steps the
# initial statistics still weigh 0.999**300 = 74%, so a net trained from
# scratch validates with statistics of the untrained net and predicts one
# class everywhere; with 0.9 the average spans the last ~10 batches and
# follows the weights as they change. Each script passes it where it builds
# its batch norm layers; nothing rewrites it afterwards.
BN_MOMENTUM = 0.9


# On CPU, AtrousConv2D switches to the matrix product when the space-to-batch
# sub-images would be narrower than this many pixels (measured with oneDNN off
# and on: `bench/conv_paths.py`, and AtrousConv2D's docstring).
MIN_SUBIMAGE_SIDE = 6


def shifted_copies_product(inputs, kernel, dilation_rate=(1, 1)):
    """A stride-1 `same` convolution, computed as one matrix product (im2col).

    Output pixel (y, x) is the sum over kernel taps (i, j) of input pixel
    (y + r*(i - k//2), x + r*(j - k//2)) times kernel[i, j]: so the k*k
    shifted copies of the zero-padded input, side by side along the channels,
    times the kernel reshaped to (k*k*channels, filters) give every output at
    once. inputs `(batch, h, w, c)`, kernel `(k_h, k_w, c, filters)` with odd
    k; works for unknown h and w.
    """
    size_h, size_w, channels, filters = kernel.shape
    rate_h, rate_w = dilation_rate
    pad_h, pad_w = rate_h * (size_h // 2), rate_w * (size_w // 2)
    height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
    padded = ops.pad(inputs, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    shifted = [
        padded[:, i * rate_h : i * rate_h + height, j * rate_w : j * rate_w + width]
        for i in range(size_h)
        for j in range(size_w)
    ]  # k*k tensors (batch, h, w, c), in the kernel's (row, column) order
    columns = ops.concatenate(shifted, axis=-1)  # (batch, h, w, k*k*c)
    product = ops.matmul(
        ops.reshape(columns, (-1, size_h * size_w * channels)),
        ops.reshape(kernel, (-1, filters)),
    )  # (batch * h * w, filters)
    return ops.reshape(product, (-1, height, width, filters))


@keras.saving.register_keras_serializable(package="segmentation")
class MatmulConv2D(layers.Conv2D):
    """`Conv2D` run on a CPU as one matrix product: same weights, config and result.

    FCN's fc6 is VGG-16's fc1 as a 7x7 convolution from 512 to 4096 channels
    (FCN, Sec. 3.1), applied to the stride-32 map, which is tiny: 4x4 for a
    128-pixel crop, 10x10 for 320. TensorFlow's CPU convolution kernels run
    this shape far below the machine's speed: with oneDNN off (TensorFlow's
    default on AMD) the two gradient kernels took 5.3 s and 5.1 s of FCN-8s'
    training step (batch 4, crop 128, 2-core AMD EPYC), and with oneDNN on
    (its default on Intel) the forward pass alone 870 ms, 3.8x the 230 ms
    without. The same sum as one large matrix product
    (`shifted_copies_product`) runs near the matmul speed of either library:
    see `bench/conv_paths.py` for the measurements that set this rule. XLA's
    CPU convolution is slower still on this shape: fc6 forward and backward
    for a batch of 4 at crop 128 took 8.6 s on JAX, and 0.3 s as the product
    (2-core AMD EPYC, JAX 0.10). So on a CPU, TensorFlow's or JAX's, the
    layer is the product; on a GPU (cuDNN) and under PyTorch it is plain
    `Conv2D`.
    """

    def convolution_op(self, inputs, kernel):
        if not self._product_is_faster(inputs):
            return super().convolution_op(inputs, kernel)
        return shifted_copies_product(inputs, kernel, self.dilation_rate)

    def _product_is_faster(self, inputs) -> bool:
        return (
            backend.name() in ("tensorflow", "jax")
            and not backend.has_accelerator()
            and self._product_applies()
        )

    def _product_applies(self) -> bool:
        return (
            self.padding == "same"
            and self.strides == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
            and all(size % 2 for size in self.kernel_size)
        )


@keras.saving.register_keras_serializable(package="segmentation")
class AtrousConv2D(MatmulConv2D):
    """`Conv2D` with holes (DeepLab v1, Sec. 3.1): same weights, config and result.

    A 3x3 kernel with dilation rate r reads the input at offsets -r, 0, +r. On
    a GPU, and under JAX or PyTorch, this layer is exactly
    `Conv2D(dilation_rate=r)` (cuDNN and XLA dilate natively; on JAX's CPU a
    rate-18 branch on a 32x32 map took 34 ms as a convolution and 48 ms as
    the product). On a CPU,
    TensorFlow without oneDNN (its default on AMD processors) runs a dilated
    convolution by space-to-batch: it cuts the map into r x r sub-images of
    about side/r pixels, convolves each without dilation and reassembles them.
    When the sub-images are tiny, as for ASPP's rates 12 and 18 on a 16x16 or
    32x32 map (v3, Sec. 3.3), the gradient kernels drown in per-image
    overhead: one rate-18 ASPP branch on a 32x32 map took 7.2 s forward and
    backward for a batch of 2 on 2 cores. In that case this layer computes the
    same sum as one matrix product instead (`shifted_copies_product`): 1.4 s.
    Where sub-images keep `MIN_SUBIMAGE_SIDE` pixels or more, space-to-batch is
    faster and is kept.
    """

    def _product_is_faster(self, inputs) -> bool:
        sides = inputs.shape[1:3]
        return (
            max(self.dilation_rate) > 1
            and None not in sides
            and min(side / rate for side, rate in zip(sides, self.dilation_rate))
            < MIN_SUBIMAGE_SIDE
            and backend.name() == "tensorflow"  # Space-to-batch is TensorFlow's.
            and super()._product_is_faster(inputs)
        )


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
    cancel it, so it would only add parameters. BN's moving statistics use
    `BN_MOMENTUM` (0.9; Keras' default 0.99 still remembers the initial values
    after a few hundred steps, so a short run validates far worse than it
    trains).
    """
    conv = AtrousConv2D if dilation_rate > 1 else layers.Conv2D
    x = conv(
        filters,
        kernel_size,
        padding=padding,
        dilation_rate=dilation_rate,
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        name=name,
    )(x)
    if batch_norm:
        x = layers.BatchNormalization(
            momentum=BN_MOMENTUM, name=f"{name}_bn" if name else None
        )(x)
    return layers.ReLU(name=f"{name}_relu" if name else None)(x)


def batch_norm_layers(model: keras.Model) -> list[layers.BatchNormalization]:
    """Every `BatchNormalization` layer of a functional model, in order."""
    return [
        layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)
    ]


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every BN layer compute its batch statistics over the global batch.

    Under `tf.distribute` each replica normally normalises with the mean and
    variance of its own slice of the batch: with 8 images per GPU that is the
    noisy 8-image statistic the DeepLab papers avoid (v3, Sec. 4.1 trains BN
    with 16 images). Keras' `synchronized=True` all-reduces the sums across
    replicas first, so BN sees the whole global batch, as on one big device.
    The flag is read when the layer is called, so setting it on a built model
    takes effect at the next trace, and `get_config` saves it. Returns the
    number of layers changed.
    """
    batch_norms = batch_norm_layers(model)
    for layer in batch_norms:
        layer.synchronized = True
    return len(batch_norms)


# VGG-16's ImageNet mean pixel in BGR order (keras.applications.vgg16).
VGG_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="segmentation")
class CaffeNormalization(layers.Layer):
    """RGB in [0, 255] -> BGR minus the ImageNet mean: Caffe-trained backbones.

    VGG-16 and ResNet-50 in `keras.applications` were converted from Caffe and
    expect `keras.applications.vgg16.preprocess_input` (mode "caffe"): channels
    flipped to BGR and the mean pixel subtracted, no scaling. Doing it inside
    the model means `model.predict` on a raw image sees what training saw.
    Used by FCN, SegNet and DeepLab (VGG-16, ResNet-50).
    """

    def __init__(self, mean_bgr=VGG_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        self.mean_bgr = tuple(float(value) for value in mean_bgr)

    def call(self, images):
        bgr = ops.flip(ops.cast(images, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(self.mean_bgr, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean_bgr": self.mean_bgr}


def pad_to_multiple(images, multiple: int):
    """Zero-pad `(B, H, W, C)` at the bottom and right to multiples of `multiple`.

    Works on sizes known only at run time, and in the graphs that the ONNX and
    LiteRT exporters convert (`export.py`'s serving model pads with it too).
    """
    height, width = ops.shape(images)[1], ops.shape(images)[2]
    # (m - h % m) % m, not (-h) % m: tf2onnx gets a negative modulo wrong.
    pad_height = (multiple - height % multiple) % multiple
    pad_width = (multiple - width % multiple) % multiple
    padded = ops.pad(images, [[0, 0], [0, pad_height], [0, pad_width], [0, 0]])
    # Run-time paddings hide the channels from the LiteRT converter's shape
    # inference, and it cannot convert a Conv2D without them: restate them.
    shape = ops.shape(padded)
    channels = images.shape[-1] or shape[3]
    return ops.reshape(padded, (-1, shape[1], shape[2], channels))


@keras.saving.register_keras_serializable(package="segmentation")
class PadToMultiple(layers.Layer):
    """Zero-pad `(B, H, W, C)` at the bottom and right to multiples of `multiple`.

    Placed after the model's normalisation, zero is the mean pixel (what the
    data pipeline pads with too). Padding at the bottom and right keeps pixel
    (0, 0) where it was, so stride grids stay aligned with the image; undo it
    with `CropToMatch(align="top_left")`.
    """

    def __init__(self, multiple: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def call(self, images):
        return pad_to_multiple(images, self.multiple)

    def compute_output_shape(self, input_shape):
        def padded(size):
            return None if size is None else -(-size // self.multiple) * self.multiple

        batch, height, width, channels = input_shape
        return (batch, padded(height), padded(width), channels)

    def get_config(self) -> dict:
        return {**super().get_config(), "multiple": self.multiple}


def _spatial_shape_of_reference(tensor_shape, reference_shape) -> tuple:
    """`tensor`'s batch and channels with `reference`'s height and width."""
    return (tensor_shape[0], reference_shape[1], reference_shape[2], tensor_shape[3])


@keras.saving.register_keras_serializable(package="segmentation")
class CropToMatch(layers.Layer):
    """Crop `inputs[0]` to the height and width of `inputs[1]`.

    `align="center"` is U-Net's "copy and crop" (Ronneberger et al. 2015,
    Fig. 1): with unpadded convolutions the encoder's map is larger than the
    decoder's, so its border is cut off evenly before concatenation.
    `align="top_left"` undoes `PadToMultiple`, which pads at the bottom/right.
    Works with dynamic sizes, where `keras.layers.CenterCrop` needs them fixed.

    Example: a (1, 64, 64, 8) tensor centre-cropped to match a (1, 56, 56, 16)
    one loses 4 rows/columns on each side and comes out as (1, 56, 56, 8).
    """

    def __init__(self, align: str = "center", **kwargs):
        super().__init__(**kwargs)
        if align not in ("center", "top_left"):
            raise ValueError(f"align must be 'center' or 'top_left', not {align!r}")
        self.align = align

    def call(self, inputs):
        tensor, reference = inputs
        height, width = ops.shape(tensor)[1], ops.shape(tensor)[2]
        target_height, target_width = ops.shape(reference)[1], ops.shape(reference)[2]
        top, left = 0, 0
        if self.align == "center":
            top = (height - target_height) // 2
            left = (width - target_width) // 2
        return tensor[:, top : top + target_height, left : left + target_width]

    def compute_output_shape(self, input_shapes):
        return _spatial_shape_of_reference(*input_shapes)

    def get_config(self) -> dict:
        return {**super().get_config(), "align": self.align}


# --------------------------------------------------------------------------
# Pooling with indices and unpooling (SegNet)
# --------------------------------------------------------------------------


def _lowest_value(dtype) -> float:
    """The lowest finite value of `dtype` (bfloat16 too: `ml_dtypes`, a Keras need)."""
    dtype = keras.backend.standardize_dtype(dtype)
    if "int" in dtype:
        return int(np.iinfo(dtype).min)
    return float(ml_dtypes.finfo(dtype).min)


def _same_padding(size, pool_size: int):
    """Rows (or columns) that "same" pooling adds, `(before, after)`: TF's split.

    `(pool_size - size % pool_size) % pool_size` in all, the smaller half
    first; works for sizes known only at run time.
    """
    total = (pool_size - size % pool_size) % pool_size
    return total // 2, total - total // 2


def _interleave(tensors: list, axis: int):
    """Merge same-shape tensors along `axis`, one row (or column) from each in turn.

    `[a, b]` along the columns (axis 2) gives `a[:, :, 0], b[:, :, 0],
    a[:, :, 1], ...`: the inverse of slicing `x[:, :, k::2]`, by a stack and a
    reshape only (no transpose, no scatter: every exporter knows them).
    """
    stacked = ops.stack(tensors, axis=axis + 1)  # e.g. (b, h, w, 2, c) for axis 2
    shape = ops.shape(stacked)
    merged = shape[axis] * shape[axis + 1]
    return ops.reshape(stacked, (*shape[:axis], merged, *shape[axis + 2 :]))


@keras.saving.register_keras_serializable(package="segmentation")
class MaxPoolingWithArgmax2D(layers.Layer):
    """Max pooling that also returns where in its window each maximum was.

    SegNet (Badrinarayanan et al. 2017, Sec. 3) stores these "max-pooling
    indices" in the encoder, "the locations of the maximum feature value in
    each pooling window", two bits per 2x2 window, so that the decoder can put
    every value back where it was (`MaxUnpooling2D`). Returns
    `(pooled, indices)`: `pooled` is `(batch, ceil(h/2), ceil(w/2), channels)`
    like `MaxPooling2D(2, padding="same")`, and `indices` (int32, same shape)
    holds, for every output value, the row-major position of its maximum
    inside its window, `dy * pool_size + dx`: 0 to 3 for 2x2 windows. Being
    local, an index never overflows, whatever the batch or image size. "same"
    padding makes odd sizes work: the last window of an odd row or column
    holds only one pixel.

    Example, one image, one channel, 2x3 input (channels dropped below):

        x = [[1, 5, 2],        pooled  = [[5, 9]]
             [4, 3, 9]]        indices = [[1, 2]]   (5 is at (0, 1) of window
                                                     [[1, 5], [4, 3]], 9 at
                                                     (1, 0) of [[2, -], [9, -]])

    The maxima are those of `tf.nn.max_pool_with_argmax(..., padding="SAME")`,
    ties included: the first maximum in row-major order wins, and +0 ties with
    -0. The gradient reaches that one element only. Built from element-wise
    ops that every backend and exporter knows (LiteRT has no
    `MaxPoolWithArgmax` kernel). Windows must not overlap
    (`strides == pool_size`), or unpooling would add values up.
    """

    def __init__(self, pool_size: int = 2, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        if strides != pool_size:
            raise ValueError(
                f"strides ({strides}) must equal pool_size ({pool_size}): "
                "unpooling needs windows that do not overlap."
            )
        self.pool_size = pool_size
        self.strides = strides

    def call(self, inputs):
        size = self.pool_size
        height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]
        padding = [(0, 0), _same_padding(height, size), _same_padding(width, size)]
        # Padding with the dtype's own lowest finite value (float32's would be
        # -inf in float16) loses to every real value but one equal to it.
        padded = ops.pad(
            inputs, padding + [(0, 0)], constant_values=_lowest_value(inputs.dtype)
        )
        # As in `pad_to_multiple`: restate the channels that run-time paddings
        # hide from the LiteRT converter, which needs them for the next Conv2D.
        shape, channels = ops.shape(padded), inputs.shape[-1] or ops.shape(inputs)[3]
        padded = ops.reshape(padded, (-1, shape[1], shape[2], channels))
        # The size*size members of every window, row-major, each (b, h/s, w/s, c).
        members = [
            padded[:, dy::size, dx::size] for dy in range(size) for dx in range(size)
        ]
        maximum = members[0]
        for member in members[1:]:
            maximum = ops.maximum(maximum, member)
        # The first member equal to the maximum wins (not ops.argmax: Keras
        # ranks -0 below +0, TensorFlow's kernel keeps the first of the two).
        indices = ops.full_like(maximum, len(members) - 1, dtype="int32")
        pooled = members[-1]
        for index in reversed(range(len(members) - 1)):
            wins = ops.equal(members[index], maximum)
            indices = ops.where(wins, index, indices)
            pooled = ops.where(wins, members[index], pooled)
        # `pooled` selects one member, not `maximum`: so the gradient goes to
        # the winner only (JAX's max would split it between ties).
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
            keras.KerasTensor(shape, dtype="int32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides)
        return config


@keras.saving.register_keras_serializable(package="segmentation")
class MaxUnpooling2D(layers.Layer):
    """Put each value back at the position in its window that the index records.

    SegNet's decoder upsampling (Badrinarayanan et al. 2017, Sec. 3, Fig. 3):
    the output is zero everywhere except at the positions of the encoder's
    maxima, which receive the decoder's values ("sparse upsampling"); the
    convolutions that follow densify it. Nothing is learned, and boundaries
    stay where the encoder saw them.

    Called on `[values, indices, before_pooling]`: `values` and `indices` have
    the shape of `MaxPoolingWithArgmax2D`'s outputs (pooled with the same
    `pool_size`), and `before_pooling` is the tensor that was pooled. Only its
    shape is used, so the output is `(batch, h, w, channels)` exactly, also
    when h or w is odd (45 rows pool to 23 and unpool to 45 again, not 46).
    Gradients flow to `values` only: each output position passes its
    gradient back to the value it came from.

    Dense, without a scatter: window position k of every window holds
    `where(indices == k, values, 0)`, and the `pool_size**2` such maps are
    interleaved back into rows and columns, then cropped to `before_pooling`.

    Example, continuing `MaxPoolingWithArgmax2D`'s (channels dropped):

        values  = [[5, 9]]    ->   [[0, 5, 0],
        indices = [[1, 2]]          [0, 0, 9]]   (the 2x3 shape of x)
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size

    def call(self, inputs):
        values, indices, before_pooling = inputs
        size = self.pool_size
        self._check_pooled_shape(values.shape, before_pooling.shape)
        rows = [
            _interleave(
                [ops.where(indices == dy * size + dx, values, 0) for dx in range(size)],
                axis=2,
            )
            for dy in range(size)
        ]  # size tensors (b, h/s, w, c): window row dy of every window
        unpooled = _interleave(rows, axis=1)  # (b, h + padding, w + padding, c)
        height, width = ops.shape(before_pooling)[1], ops.shape(before_pooling)[2]
        top, left = _same_padding(height, size)[0], _same_padding(width, size)[0]
        return unpooled[:, top : top + height, left : left + width]

    def _check_pooled_shape(self, values_shape, before_pooling_shape) -> None:
        for pooled, side in zip(values_shape[1:3], before_pooling_shape[1:3]):
            if None not in (pooled, side) and pooled != -(-side // self.pool_size):
                raise ValueError(
                    f"values of shape {tuple(values_shape)} are not "
                    f"{tuple(before_pooling_shape)} pooled by {self.pool_size}: "
                    "give MaxUnpooling2D the pool_size of its MaxPoolingWithArgmax2D."
                )

    def compute_output_shape(self, input_shapes):
        values_shape, _, before_pooling_shape = input_shapes
        return (*before_pooling_shape[:3], values_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


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
    residual sum coming after the last BN. Both BN layers use `BN_MOMENTUM`.
    Layer names are `{name}_depthwise`,
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
    x = layers.BatchNormalization(
        epsilon=epsilon, momentum=BN_MOMENTUM, name=f"{name}_depthwise_BN"
    )(x)
    if relu_inside:
        x = layers.ReLU(name=f"{name}_depthwise_relu")(x)
    x = layers.Conv2D(
        filters,
        1,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_pointwise",
    )(x)
    x = layers.BatchNormalization(
        epsilon=epsilon, momentum=BN_MOMENTUM, name=f"{name}_pointwise_BN"
    )(x)
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
    take 513x513, 512x512 and 500x375 images alike. Every backend resizes
    with half-pixel centres (`align_corners=False`) and without antialiasing,
    so the results agree.

    Example: a (2, 33, 33, 21) tensor resized like a (2, 513, 513, 3) one
    comes out as (2, 513, 513, 21).
    """

    def __init__(self, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        tensor, reference = inputs
        size = ops.shape(reference)[1:3]
        if backend.name() == "tensorflow":
            # keras.ops.image.resize checks `size > 0` in Python, which fails
            # in a TensorFlow graph where the size is known only at run time.
            resized = tf.image.resize(tensor, size, method=self.interpolation)
        else:
            # JAX and PyTorch trace with static shapes: `size` holds ints.
            resized = ops.image.resize(tensor, size, interpolation=self.interpolation)
        return ops.cast(resized, self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        return _spatial_shape_of_reference(*input_shapes)

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="segmentation")
class BandNormalization(layers.Layer):
    """Standardise each band of an image: `(images - mean) / std`, band by band.

    For images that are not 8-bit RGB (greyscale, 16-bit, RGBA, multi-band
    TIFF: `common.voc.ImageFormat`), in place of a model's own RGB
    normalisation. `mean` and `std` hold one value per band, measured on the
    training images (`common.voc.band_statistics`); they are stored in the
    config as short lists. Doing it inside the model means `model.predict`
    on a raw image sees what training saw, and padding with `mean` (what the
    pipeline does) gives zeros. Runs in float32 whatever the precision
    policy: 16-bit values (up to 65535) overflow float16, whose largest is
    65504.

    Example: mean (1000.0,), std (250.0,) maps a grey value of 1500 to 2.0.
    """

    def __init__(self, mean, std, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        if len(self.mean) != len(self.std) or min(self.std, default=1) <= 0:
            raise ValueError(
                f"mean {self.mean} and std {self.std} need one value per band, std > 0."
            )

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        return (images - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


def normalize_images(
    images,
    rgb_normalization: layers.Layer,
    band_mean=None,
    band_std=None,
):
    """A network's first step: its own RGB normalisation, or per-band standardisation.

    `rgb_normalization` is the layer the network's recipe uses for 8-bit RGB
    in [0, 255] (`CaffeNormalization` for VGG-16 and ResNet-50, `Rescaling`
    to [-1, 1] for U-Net and MobileNetV2); it is applied when `band_mean` is
    None. Given `band_mean` and `band_std` (other images, see
    `BandNormalization`), a `BandNormalization` named "band_normalization"
    takes its place and the RGB layer is left out of the model.
    """
    if band_mean is None:
        return rgb_normalization(images)
    return BandNormalization(band_mean, band_std, name="band_normalization")(images)
