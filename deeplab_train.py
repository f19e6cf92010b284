"""Train DeepLab (v1, v2, v3 or v3+) on PASCAL VOC 2012 (or `shapes`, or your masks).

    bash data/voc_download.sh
    python deeplab_train.py --variant v3plus --backbone resnet50 --epochs 50
    python deeplab_train.py --variant v3 --backbone mobilenetv2 --epochs 50
    python deeplab_train.py --variant v1 --epochs 50            # VGG-16 LargeFOV
    python deeplab_train.py --dataset shapes --backbone mobilenetv2 \
        --backbone-weights none --no-freeze-bn --optimizer adam \
        --learning-rate 1e-3 --crop-size 64 --epochs 10                     # demo
    python deeplab_train.py --dataset camvid --variant v3plus \
        --backbone mobilenetv2 --backbone-weights none --no-freeze-bn \
        --head-filters 128 --image-scale 0.5 --crop-size 192 \
        --scale-range 0.75 1.5 --batch-size 8 --optimizer adam \
        --learning-rate 2e-3 --weight-decay 0 --loss dice \
        --epochs 10 --steps-per-epoch 72  # CamVid: see the README's Results

The demo trains from scratch on a CPU: v3+ on MobileNetV2 with Adam, because
its decoder sees stride-4 features where v3's head sees a 4 x 4 map of a 64 px
crop. It finds the shapes but still confuses their classes (val mean IoU 0.32
after 10 epochs, measured; v3 with the default SGD: 0.24, shapes misplaced).
DeepLab's strength is an ImageNet backbone: on VOC, keep the defaults.

Four papers by Chen et al., each adding one idea to the one before:

- v1 (ICLR 2015, https://arxiv.org/abs/1412.7062): *atrous* (dilated)
  convolution. VGG-16's last two poolings keep stride 1 and the layers after
  them dilate their kernels instead, so the network sees as far as before but
  its output has stride 8, not 32. fc6 becomes a 3x3 convolution with
  dilation 12: a large field of view ("LargeFOV") for 1024 channels.
- v2 (TPAMI 2017, https://arxiv.org/abs/1606.00915): *atrous spatial pyramid
  pooling* (ASPP-L): four classifiers with dilation 6, 12, 18 and 24 look at
  the same ResNet features at four scales, and their logits are summed. v2
  then sharpens boundaries with a fully-connected CRF; that is a
  post-processing step on the predictions, not part of this network: run it
  with `evaluate.py --crf` or `predict.py --crf` (`common/crf.py`).
- v3 (arXiv 2017, https://arxiv.org/abs/1706.05587): ASPP with batch norm and
  an *image-level* branch (global average pooling) for context the dilated
  kernels cannot reach; the branches are concatenated and projected, not
  summed. Rates (6, 12, 18) at output stride 16, doubled at 8. Multi-grid
  rates (1, 2, 4) inside the last ResNet stage.
- v3+ (ECCV 2018, https://arxiv.org/abs/1802.02611): v3 as the encoder, plus a
  small decoder that refines the stride-16 output with stride-4 backbone
  features, and depthwise-separable convolutions throughout (aligned
  Xception-65).

Every backbone keeps its strides until the output stride is reached and
dilates after that; the logits are upsampled to the input size before the
loss, so labels are never downsampled. Dilated convolutions are
`common.layers.AtrousConv2D`: Keras' `Conv2D`, with a faster CPU path for
large rates on small maps (see its docstring).

On several GPUs (`--strategy mirrored`), `--sync-bn` (on by default here)
computes batch-norm statistics over the global batch, as the papers' batch
of 16 needs; `--freeze-bn` then defaults off once that batch reaches 12.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Sequence

from common import stops

if __name__ == "__main__":  # Before the slow imports: any stop ends in one line.
    stops.install()

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
import keras
from keras import layers

from common import cli, training, voc
from common.backbones import (
    adapt_first_convolution,
    copy_weights_by_name,
    load_application,
)
from common.errors import InputError
from common.layers import (
    BN_MOMENTUM,
    AtrousConv2D,
    CaffeNormalization,
    ResizeLike,
    batch_norm_layers,
    conv_bn_relu,
    normalize_images,
    separable_conv_bn,
)
from common.losses import make_loss
from common.metrics import ConfusionMatrix

VARIANTS = ("v1", "v2", "v3", "v3plus")
BACKBONES = {  # The first one is the variant's default.
    "v1": ("vgg16",),
    "v2": ("resnet50",),
    "v3": ("resnet50", "mobilenetv2", "xception"),
    "v3plus": ("resnet50", "xception", "mobilenetv2"),
}
DEFAULT_OUTPUT_STRIDE = {"v1": 8, "v2": 8, "v3": 16, "v3plus": 16}
# ASPP rates as published, and the output stride they were published for.
ASPP_RATES = {"v2": ((6, 12, 18, 24), 8), "v3": ((6, 12, 18), 16)}
RESNET50_BLOCKS = (3, 4, 6, 3)
MULTI_GRID = (1, 2, 4)
# Batch norm statistics are only worth learning with enough images per step
# (v3, Sec. 4.1 trains BN with batch 16 and freezes it afterwards).
MIN_BN_BATCH = 12


# --------------------------------------------------------------------------
# Output stride: strides become dilation rates
# --------------------------------------------------------------------------


class OutputStride:
    """Replace the strides past `output_stride` by dilation (atrous) rates.

    Call `strided(stride)` for every layer that would downsample, in order.
    While the network is still below the output stride the layer keeps its
    stride. After that it gets stride 1, and every layer that follows dilates
    its kernels by the removed stride instead (`self.rate`), so the receptive
    field grows as in the original network while the feature map stays at
    `output_stride` (DeepLab v3, Sec. 3.1 and Fig. 3). The layer whose stride
    was removed keeps the rate before it, as DeepLab's own code does.
    """

    def __init__(self, output_stride: int, stride: int = 1):
        self.output_stride = output_stride
        self.stride = stride  # Product of the strides kept so far.
        self.rate = 1  # Dilation for layers from here on.

    def strided(self, stride: int) -> tuple[int, int]:
        """Return `(stride, dilation_rate)` for a layer that would have `stride`."""
        if self.stride * stride > self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.stride *= stride
        return stride, self.rate


def aspp_rates(variant: str, output_stride: int) -> tuple[int, ...]:
    """ASPP dilation rates, scaled with the output stride (v3, Sec. 4.1).

    Halving the output stride doubles the feature map, so the rates double to
    cover the same part of the image: (6, 12, 18) at 16, (12, 24, 36) at 8.
    """
    rates, published_stride = ASPP_RATES["v2" if variant == "v2" else "v3"]
    if (published_stride * rates[0]) % output_stride:
        raise ValueError(f"No whole ASPP rates for output stride {output_stride}.")
    return tuple(rate * published_stride // output_stride for rate in rates)


# --------------------------------------------------------------------------
# Backbones: each returns (features at output stride, features at stride 4)
# --------------------------------------------------------------------------


def batch_norm(name: str, epsilon: float = 1e-3) -> layers.BatchNormalization:
    """Batch norm as every backbone here builds it.

    `epsilon` is that of the layer's `keras.applications` twin, so ImageNet
    statistics load unchanged. The momentum is not: the applications use
    0.99 (ResNet-50) and 0.999 (MobileNetV2), with which a net trained from
    scratch validates with the statistics of its untrained self for hundreds
    of steps; `BN_MOMENTUM` (0.9) follows the weights (`common/layers.py`).
    With `--freeze-bn` the layers do not update their statistics at all.
    """
    return layers.BatchNormalization(epsilon=epsilon, momentum=BN_MOMENTUM, name=name)


def vgg16_largefov(images, band_mean=None, band_std=None):
    """VGG-16 as in DeepLab v1 (Sec. 3.1 and 4.1), output stride 8.

    Layer names are `keras.applications.VGG16`'s. All five poolings are 3x3
    (as in the released model); pool4 and pool5 keep stride 1, so conv5's
    3x3 kernels dilate by 2 to see what they saw at stride 16. Images that
    are not RGB are standardised with `band_mean` and `band_std` instead of
    Caffe's preprocessing (so in every backbone: `normalize_images`).
    """
    x = normalize_images(
        images, CaffeNormalization(name="caffe_normalization"), band_mean, band_std
    )
    for block, (filters, convs) in enumerate(
        ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1
    ):
        for conv in range(1, convs + 1):
            x = AtrousConv2D(
                filters,
                3,
                padding="same",
                dilation_rate=2 if block == 5 else 1,
                activation="relu",
                name=f"block{block}_conv{conv}",
            )(x)
        x = layers.MaxPooling2D(
            3, strides=2 if block <= 3 else 1, padding="same", name=f"block{block}_pool"
        )(x)  # (batch, h/8, w/8, 512) from block 3 on
    return x, None  # v1 has no decoder.


def resnet_bottleneck(x, filters: int, stride: int, rate: int, shortcut: bool, name):
    """A ResNet-50 bottleneck unit with `keras.applications.ResNet50`'s layer names.

    Keras puts the stride on the first 1x1 convolution, so dilating the 3x3
    that follows does not change any weight's shape: ImageNet weights still
    load by name.
    """
    if shortcut:  # Projection shortcut where the shape changes.
        residual = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(
            x
        )
        residual = batch_norm(f"{name}_0_bn", epsilon=1.001e-5)(residual)
    else:
        residual = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = batch_norm(f"{name}_1_bn", epsilon=1.001e-5)(x)
    x = layers.ReLU(name=f"{name}_1_relu")(x)
    x = AtrousConv2D(
        filters, 3, padding="same", dilation_rate=rate, name=f"{name}_2_conv"
    )(x)
    x = batch_norm(f"{name}_2_bn", epsilon=1.001e-5)(x)
    x = layers.ReLU(name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = batch_norm(f"{name}_3_bn", epsilon=1.001e-5)(x)
    x = layers.Add(name=f"{name}_add")([residual, x])
    return layers.ReLU(name=f"{name}_out")(x)


def resnet50(
    images,
    output_stride: int,
    multi_grid: Sequence[int] = (1, 1, 1),
    blocks: Sequence[int] = RESNET50_BLOCKS,
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
):
    """Dilated ResNet-50 (v2 Sec. 4.3, v3 Sec. 3.1) with `multi_grid` in conv5.

    Multi-grid (v3, Sec. 3.1): the units of the last stage dilate by their
    stage's rate times (1, 2, 4), e.g. (2, 4, 8) at output stride 16.
    `blocks` (units per stage, (3, 4, 6, 3) for ResNet-50) can be made smaller
    for quick runs; ImageNet weights then load into the units that exist.
    """
    x = normalize_images(
        images, CaffeNormalization(name="caffe_normalization"), band_mean, band_std
    )
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = batch_norm("conv1_bn", epsilon=1.001e-5)(x)
    x = layers.ReLU(name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)  # (b, h/4, w/4, 64)

    schedule = OutputStride(output_stride, stride=4)
    for stage, (filters, units, stride) in enumerate(
        zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), start=2
    ):
        # The stride sits on the stage's first 1x1 conv, before any 3x3, so a
        # stage whose stride is removed dilates all of its 3x3 convs.
        stride, _ = schedule.strided(stride)
        for unit in range(units):
            grid = multi_grid[unit % len(multi_grid)] if stage == 5 else 1
            x = resnet_bottleneck(
                x,
                filters,
                stride if unit == 0 else 1,
                schedule.rate * grid,
                shortcut=unit == 0,
                name=f"conv{stage}_block{unit + 1}",
            )
        if stage == 2:
            low_level = x  # (batch, h/4, w/4, 256)
    return x, low_level  # (batch, h/os, w/os, 2048)


def mobilenetv2_unit(x, expansion: int, filters: int, stride: int, schedule, unit):
    """Inverted residual unit (Sandler et al. 2018) with Keras' MobileNetV2 names."""
    prefix = f"block_{unit}_" if unit else "expanded_conv_"
    in_channels = x.shape[-1]
    inputs = x
    if unit:  # The first unit has no expansion.
        x = layers.Conv2D(
            expansion * in_channels, 1, use_bias=False, name=f"{prefix}expand"
        )(x)
        x = batch_norm(f"{prefix}expand_BN")(x)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    layer_stride, rate = schedule.strided(stride)
    x = layers.DepthwiseConv2D(
        3,
        strides=layer_stride,
        dilation_rate=rate,
        padding="same",
        use_bias=False,
        name=f"{prefix}depthwise",
    )(x)
    x = batch_norm(f"{prefix}depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}project")(x)
    x = batch_norm(f"{prefix}project_BN")(x)
    if in_channels == filters and stride == 1:
        x = layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def mobilenetv2(images, output_stride: int, band_mean=None, band_std=None):
    """Dilated MobileNetV2 (width 1.0) up to its 320-channel unit 16.

    As in the DeepLab model zoo's `mobilenetv2_coco_voc_trainaug`: the last
    1x1 convolution to 1280 channels is dropped and ASPP reads the 320
    channels of unit 16. Layer names are `keras.applications.MobileNetV2`'s.
    """
    x = normalize_images(
        images,
        layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range"),
        band_mean,
        band_std,
    )
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    x = batch_norm("bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    schedule = OutputStride(output_stride, stride=2)
    unit = 0
    # (expansion, channels, units, stride) of Table 2 of the MobileNetV2 paper.
    for expansion, filters, units, stride in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
        for repeat in range(units):
            x = mobilenetv2_unit(
                x, expansion, filters, stride if repeat == 0 else 1, schedule, unit
            )
            if unit == 2:
                low_level = x  # (batch, h/4, w/4, 24): v3+ decoder input.
            unit += 1
    return x, low_level  # (batch, h/os, w/os, 320)


def xception_unit(
    x,
    depths: Sequence[int],
    name: str,
    schedule: OutputStride,
    stride: int = 1,
    shortcut: str = "conv",
    relu_inside: bool = False,
):
    """One unit of aligned Xception: three separable convs and a shortcut.

    v3+ Sec. 3.2 changes Chollet's Xception: every max pooling becomes a
    separable convolution with stride 2 (which can then be made atrous), and
    the entry flow is "aligned" (no padding tricks) so features line up.
    `shortcut` is "conv" (1x1 projection), "sum" (identity) or "none".
    Returns the unit's output and the output of its second separable conv
    (the stride-4 decoder features of entry block 2).
    """
    inputs = x
    for index, depth in enumerate(depths):
        layer_stride, rate = (
            schedule.strided(stride) if index == 2 else (1, schedule.rate)
        )
        x = separable_conv_bn(
            x,
            depth,
            strides=layer_stride,
            dilation_rate=rate,
            relu_inside=relu_inside,
            name=f"{name}_separable_conv{index + 1}",
        )
        if index == 1:
            before_stride = x
    if shortcut == "conv":
        residual = layers.Conv2D(
            depths[-1],
            1,
            strides=layer_stride,
            use_bias=False,
            name=f"{name}_shortcut",
        )(inputs)
        residual = batch_norm(f"{name}_shortcut_BN")(residual)
        x = layers.Add(name=f"{name}_add")([x, residual])
    elif shortcut == "sum":
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x, before_stride


def xception65(images, output_stride: int, band_mean=None, band_std=None):
    """Aligned Xception-65 of DeepLab v3+ (Sec. 3.2, Fig. 4).

    Entry flow: two 3x3 convs and three units with stride 2; middle flow: 16
    identity units of 728 channels; exit flow: a 728-1024-1024 unit (stride
    2, dilated away at output stride 16) and a 1536-1536-2048 unit with ReLU
    inside its separable convs. Fig. 4 draws BN and ReLU after every
    depthwise conv; the released checkpoints (and this code) have that only in
    the last unit, the others starting each separable conv with a ReLU
    instead. No ImageNet weights exist in Keras for it.
    """
    x = normalize_images(
        images,
        layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range"),
        band_mean,
        band_std,
    )
    schedule = OutputStride(output_stride)
    stride, _ = schedule.strided(2)
    x = layers.Conv2D(
        32, 3, strides=stride, padding="same", use_bias=False, name="entry_flow_conv1_1"
    )(x)
    x = batch_norm("entry_flow_conv1_1_BN")(x)
    x = layers.ReLU(name="entry_flow_conv1_1_relu")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="entry_flow_conv1_2")(
        x
    )
    x = batch_norm("entry_flow_conv1_2_BN")(x)
    x = layers.ReLU(name="entry_flow_conv1_2_relu")(x)
    x, _ = xception_unit(x, (128,) * 3, "entry_flow_block1", schedule, stride=2)
    x, low_level = xception_unit(x, (256,) * 3, "entry_flow_block2", schedule, 2)
    x, _ = xception_unit(x, (728,) * 3, "entry_flow_block3", schedule, stride=2)
    for unit in range(1, 17):
        x, _ = xception_unit(
            x, (728,) * 3, f"middle_flow_unit_{unit}", schedule, shortcut="sum"
        )
    x, _ = xception_unit(x, (728, 1024, 1024), "exit_flow_block1", schedule, 2)
    x, _ = xception_unit(
        x,
        (1536, 1536, 2048),
        "exit_flow_block2",
        schedule,
        shortcut="none",
        relu_inside=True,
    )
    return x, low_level  # (batch, h/os, w/os, 2048), (batch, h/4, w/4, 256)


# --------------------------------------------------------------------------
# Heads: LargeFOV (v1), ASPP-L (v2), ASPP (v3), decoder (v3+)
# --------------------------------------------------------------------------


def largefov_head(x, num_classes: int, filters: int = 1024):
    """fc6 as a 3x3 conv with dilation 12 and fc7 as a 1x1 conv (v1, Sec. 4.1).

    The paper subsamples VGG's 4096-channel fc layers to 1024 channels and
    fc6's 7x7 kernel to 3x3, and keeps the field of view large with dilation
    12 (224 pixels of the input at output stride 8).
    """
    x = AtrousConv2D(
        filters, 3, padding="same", dilation_rate=12, activation="relu", name="fc6"
    )(x)
    x = layers.Dropout(0.5, name="fc6_dropout")(x)
    x = layers.Conv2D(filters, 1, activation="relu", name="fc7")(x)
    x = layers.Dropout(0.5, name="fc7_dropout")(x)
    return layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)


def aspp_l(x, num_classes: int, rates: Sequence[int]):
    """ASPP-L of v2 (Sec. 3.3, Fig. 4): one 3x3 classifier per rate, logits summed."""
    branches = [
        AtrousConv2D(
            num_classes,
            3,
            padding="same",
            dilation_rate=rate,
            dtype="float32",
            name=f"aspp_l{index}",
        )(x)
        for index, rate in enumerate(rates, start=1)
    ]
    return layers.Add(dtype="float32", name="logits")(branches)


def image_pooling(x, filters: int = 256):
    """ASPP's image-level branch (v3, Sec. 3.3): global context at any input size.

    Global average pooling -> 1x1 conv -> BN -> ReLU, then bilinear resize back
    to the feature map. `keepdims` and a resize to the feature map's run-time
    size replace a fixed `AveragePooling2D(pool_size)`, which would tie the
    model to one input size. The BN here sees one value per image and
    channel: with a batch of one it normalises everything to zero.
    """
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling_gap")(x)
    pooled = conv_bn_relu(pooled, filters, 1, name="image_pooling")  # (b, 1, 1, 256)
    return ResizeLike(name="image_pooling_resize")([pooled, x])


def aspp(
    x,
    rates: Sequence[int],
    separable: bool = False,
    filters: int = 256,
):
    """Atrous spatial pyramid pooling of v3 (Sec. 3.3, Fig. 5).

    Five branches, each 256 channels with BN and ReLU, see the same features:
    image pooling, a 1x1 conv, and three 3x3 atrous convs with `rates`
    (depthwise-separable in v3+ with Xception). They are concatenated and
    projected back to 256 channels by a 1x1 conv. Empty `rates` leaves image
    pooling and 1x1 only, the model zoo's MobileNetV2 head.
    """
    branches = [image_pooling(x, filters), conv_bn_relu(x, filters, 1, name="aspp0")]
    for index, rate in enumerate(rates, start=1):
        if separable:
            branch = separable_conv_bn(
                x, filters, dilation_rate=rate, epsilon=1e-5, name=f"aspp{index}"
            )
        else:
            branch = conv_bn_relu(
                x, filters, 3, dilation_rate=rate, name=f"aspp{index}"
            )
        branches.append(branch)
    x = layers.Concatenate(name="aspp_concat")(branches)  # (b, h/os, w/os, 5 * 256)
    x = conv_bn_relu(x, filters, 1, name="concat_projection")
    return layers.Dropout(0.1, name="concat_projection_dropout")(x)


def decoder(x, low_level, separable: bool, filters: int = 256):
    """The v3+ decoder (Sec. 3.1, Fig. 2): refine with stride-4 features.

    The encoder output is upsampled (x4 at output stride 16) to the low-level
    features, which are first squeezed to 48 channels so that they do not
    outweigh the 256 encoder channels (Table 1); two 3x3 convs then mix them.
    """
    x = ResizeLike(name="decoder_upsample")([x, low_level])  # (b, h/4, w/4, 256)
    low_level = conv_bn_relu(low_level, 48, 1, name="feature_projection0")
    x = layers.Concatenate(name="decoder_concat")([x, low_level])  # (..., 304)
    for index in range(2):
        if separable:
            x = separable_conv_bn(x, filters, epsilon=1e-5, name=f"decoder_conv{index}")
        else:
            x = conv_bn_relu(x, filters, 3, name=f"decoder_conv{index}")
    return x


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


def build_deeplab(
    num_classes: int,
    variant: str = "v3plus",
    backbone: str | None = None,
    output_stride: int | None = None,
    backbone_weights: str | None = None,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    multi_grid: Sequence[int] = MULTI_GRID,
    aspp_atrous: bool | None = None,
    resnet_blocks: Sequence[int] = RESNET50_BLOCKS,
    head_filters: int | None = None,
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
) -> keras.Model:
    """Return DeepLab `variant`, mapping images in [0, 255] to logits at input size.

    `backbone` defaults to the variant's first in `BACKBONES`, `output_stride`
    to 8 for v1/v2 and 16 for v3/v3+. The layer named "features" is the
    backbone output the head reads, at `input / output_stride`. `multi_grid`
    applies to ResNet-50 in v3 and v3+; `aspp_atrous=False` drops ASPP's
    three atrous branches (default: dropped for MobileNetV2 only, as in the
    model zoo). `backbone_weights`: None, "imagenet" or a file (see
    `load_backbone_weights`). `head_filters` narrows the head for quick CPU
    runs (default: 1024 for v1's fc6/fc7, 256 for ASPP and the decoder).
    Images that are not RGB (`input_shape` with their bands) are
    standardised with `band_mean` and `band_std` instead of the backbone's
    RGB preprocessing.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    backbone = backbone or BACKBONES[variant][0]
    if backbone not in BACKBONES[variant]:
        raise ValueError(
            f"DeepLab {variant} is built on {' or '.join(BACKBONES[variant])}, "
            f"not {backbone!r}."
        )
    output_stride = output_stride or DEFAULT_OUTPUT_STRIDE[variant]
    if output_stride not in (8, 16) or (variant == "v1" and output_stride != 8):
        raise ValueError(
            f"output_stride must be 8 or 16 (8 for v1), not {output_stride}."
        )
    if backbone == "xception" and backbone_weights == "imagenet":
        raise ValueError(
            "Keras has no ImageNet weights for aligned Xception-65: use "
            "--backbone-weights none or a .keras file with its layer names."
        )

    images = keras.Input(input_shape, name="image")
    bands = {"band_mean": band_mean, "band_std": band_std}  # None: RGB.
    if backbone == "vgg16":
        features, low_level = vgg16_largefov(images, **bands)
    elif backbone == "resnet50":
        grid = multi_grid if variant in ("v3", "v3plus") else (1,)
        features, low_level = resnet50(
            images, output_stride, grid, resnet_blocks, **bands
        )
    elif backbone == "mobilenetv2":
        features, low_level = mobilenetv2(images, output_stride, **bands)
    else:
        features, low_level = xception65(images, output_stride, **bands)
    x = layers.Identity(name="features")(features)  # (b, h/os, w/os, channels)

    if variant == "v1":
        logits = largefov_head(x, num_classes, head_filters or 1024)
    elif variant == "v2":
        logits = aspp_l(x, num_classes, aspp_rates(variant, output_stride))
    else:
        if aspp_atrous is None:
            aspp_atrous = backbone != "mobilenetv2"
        rates = aspp_rates(variant, output_stride) if aspp_atrous else ()
        separable = backbone == "xception"
        x = aspp(x, rates, separable, head_filters or 256)
        if variant == "v3plus":
            x = decoder(x, low_level, separable, head_filters or 256)
        logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    # Bilinear upsampling to the input: the loss sees full-resolution logits.
    logits = ResizeLike(dtype="float32", name="upsample_logits")([logits, images])
    model = keras.Model(images, logits, name=f"deeplab_{variant}_{backbone}")
    load_backbone_weights(model, backbone, backbone_weights)
    return model


# --------------------------------------------------------------------------
# Pretrained weights and batch norm
# --------------------------------------------------------------------------


def keras_application(backbone: str, weights: str | None) -> keras.Model:
    """The `keras.applications` model whose layer names our backbone shares.

    VGG-16 keeps its top with ImageNet weights, so that fc6/fc7 can start from
    fc1/fc2.
    """
    include_top = backbone == "vgg16" and weights == "imagenet"
    return load_application(backbone, weights, include_top=include_top)


def decimate_vgg_fc(source: keras.Model, model: keras.Model) -> None:
    """Initialise fc6/fc7 from VGG-16's fc1/fc2, subsampled (v1, Sec. 4.1).

    fc1 is a 7x7x512 -> 4096 convolution in disguise: keep every 3rd row and
    column of its kernel (3x3) and every 4th output channel (1024); fc2 keeps
    every 4th input and output channel.
    """
    kernel, bias = source.get_layer("fc1").get_weights()
    kernel = kernel.reshape(7, 7, 512, 4096)[::3, ::3, :, ::4]
    model.get_layer("fc6").set_weights([kernel, bias[::4]])
    kernel, bias = source.get_layer("fc2").get_weights()
    model.get_layer("fc7").set_weights([kernel[::4, ::4][None, None], bias[::4]])


def load_backbone_weights(
    model: keras.Model, backbone: str, backbone_weights: str | None
) -> None:
    """Copy pretrained weights into `model` by layer name.

    `backbone_weights` is None (random), "imagenet" (the Keras applications'
    weights for ResNet-50, MobileNetV2 and VGG-16; dilation does not change a
    kernel's shape, so they fit), a `.keras` model (any model whose layer
    names match, such as an earlier DeepLab run), or a weights file of the
    Keras application (`.weights.h5`). For images that are not RGB, the
    backbone's RGB first convolution is adapted to their bands
    (`adapt_first_convolution`).
    """
    if backbone_weights is None:
        return
    if backbone_weights.endswith(".keras"):
        source = keras.saving.load_model(backbone_weights, compile=False)
    elif backbone_weights == "imagenet":
        source = keras_application(backbone, "imagenet")
    elif os.path.isfile(backbone_weights):
        source = keras_application(backbone, None)
        source.load_weights(backbone_weights)
    else:
        raise InputError(f"--backbone-weights: no file {backbone_weights!r}")

    copied = copy_weights_by_name(source, model)
    copied += adapt_first_convolution(source, model, backbone)
    if not copied:
        raise ValueError(f"No layer of {backbone_weights!r} matches {model.name}.")
    own_names = {layer.name for layer in model.layers}
    for layer in source.layers:
        if layer.weights and layer.name in own_names and layer.name not in copied:
            print(f"Not loading {layer.name}: its weights have other shapes.")
    if backbone == "vgg16" and "fc1" in {layer.name for layer in source.layers}:
        decimate_vgg_fc(source, model)
    print(f"Loaded {len(copied)} layers of {backbone} from {backbone_weights}.")


def freeze_batch_norm(model: keras.Model) -> int:
    """Use every BN layer's moving statistics and stop updating them.

    In Keras 3 a `BatchNormalization` with `trainable=False` runs in inference
    mode even during `fit`: it normalises with its moving mean and variance,
    does not update them, and does not train gamma and beta. That is how
    DeepLab is fine-tuned at small batch sizes (the official code's
    `fine_tune_batch_norm=False`; v3, Sec. 4.1 trains BN at batch 16 only and
    then freezes it), except that there gamma and beta keep training. Returns
    the number of frozen layers.
    """
    batch_norms = batch_norm_layers(model)
    for layer in batch_norms:
        layer.trainable = False
    return len(batch_norms)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description="Train DeepLab v1/v2/v3/v3+ (Chen et al.) for semantic "
        "segmentation.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--variant",
        choices=VARIANTS,
        default="v3plus",
        help="v1: VGG-16 LargeFOV; v2: ASPP-L; v3: ASPP with image pooling; "
        "v3plus: v3 plus a decoder (default: %(default)s)",
    )
    model.add_argument(
        "--backbone",
        choices=["resnet50", "xception", "mobilenetv2", "vgg16"],
        help="v1: vgg16; v2: resnet50; v3: resnet50 (default), mobilenetv2 or "
        "xception; v3plus: resnet50 (default), xception (the paper's aligned "
        "Xception-65) or mobilenetv2",
    )
    model.add_argument(
        "--output-stride",
        type=int,
        choices=[8, 16],
        help="input size / feature size at the head; strides beyond it become "
        "dilation. Default: 8 for v1/v2, 16 for v3/v3plus (the papers train at 16 "
        "and evaluate at 8, which quadruples the backbone's cost)",
    )
    model.add_argument(
        "--backbone-weights",
        type=cli.backbone_weights,
        default="imagenet",
        help="imagenet (Keras applications: resnet50, mobilenetv2, vgg16; not "
        "xception, which has none in Keras), none, or a file: a .keras model with "
        "matching layer names or the application's .weights.h5 "
        "(default: %(default)s)",
    )
    model.add_argument(
        "--multi-grid",
        type=cli.positive_int,
        nargs="+",
        default=list(MULTI_GRID),
        help="v3/v3plus on resnet50: dilation multipliers of the conv5 units "
        "(default: 1 2 4, v3 Sec. 3.1)",
    )
    model.add_argument(
        "--aspp-atrous",
        action=argparse.BooleanOptionalAction,
        help="ASPP's three 3x3 atrous branches (default: on, except mobilenetv2, "
        "whose model-zoo head is image pooling + 1x1 only)",
    )
    model.add_argument(
        "--resnet-blocks",
        type=cli.positive_int,
        nargs=4,
        default=list(RESNET50_BLOCKS),
        help="units per ResNet stage (default: 3 4 6 3 = ResNet-50; 1 1 1 1 for a "
        "quick CPU run)",
    )
    model.add_argument(
        "--head-filters",
        type=cli.positive_int,
        help="channels of v1's fc6/fc7 (default: 1024) or of the v3/v3plus ASPP "
        "and decoder (default: 256); fewer for a quick CPU run, where dilated "
        "convolutions train slowly",
    )
    model.add_argument(
        "--freeze-bn",
        action=argparse.BooleanOptionalAction,
        help="use BN's moving statistics (from ImageNet) instead of batch "
        f"statistics, and do not update them. Default: on when the batch that BN "
        f"sees (--batch-size; times the replicas with --sync-bn) is below "
        f"{MIN_BN_BATCH}, where batch statistics are too noisy (the papers train BN "
        "with batch 16 only)",
    )
    cli.add_training_args(parser)
    parser.set_defaults(
        optimizer="sgd",
        momentum=0.9,
        learning_rate=None,
        weight_decay=None,
        crop_size=512,
        lr_schedule="poly",
        sync_bn=True,  # v3 Sec. 4.1: BN statistics need a batch of 16.
    )
    parser.epilog = (
        "Defaults follow the papers: SGD with momentum 0.9, poly learning rate "
        "(power 0.9) from 0.007 per 16 images (v1: 0.001 per 20), weight decay "
        "1e-4 (resnet50), 4e-5 (xception, mobilenetv2) or 5e-4 (vgg16); Keras' "
        "decay is decoupled from the gradient, so with momentum 0.9 it acts about "
        "10x weaker than the papers' L2 loss of the same value. Crop "
        "512, not the papers' 513: TensorFlow's DeepLab resizes with "
        "align_corners=True, where 513 = 32 * 16 + 1 puts a pixel on both "
        "borders; Keras resizes with half-pixel centres, where multiples of the "
        "output stride line up."
    )
    cli.describe_default(
        parser,
        "learning_rate",
        "0.007 x batch / 16; v1: 0.001 x batch / 20, the papers' rates scaled to "
        "--batch-size",
    )
    cli.describe_default(
        parser, "weight_decay", "1e-4 for resnet50, 5e-4 for vgg16, 4e-5 otherwise"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = cli.parse(parser, argv)
    resolve_defaults(parser, args)
    cli.check_crop_size(parser, args.crop_size, input_size_rule(args))
    cli.check_backbone_weights(args.backbone_weights)
    return args


def input_size_rule(args: argparse.Namespace) -> Callable[[int], int]:
    """The model takes any size; multiples of the output stride line up exactly."""
    return lambda size: voc.round_up(size, args.output_stride)


def resolve_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Fill in the defaults that depend on the variant, backbone and batch size."""
    args.backbone = args.backbone or BACKBONES[args.variant][0]
    if args.backbone not in BACKBONES[args.variant]:
        parser.error(
            f"--variant {args.variant} takes --backbone "
            f"{' or '.join(BACKBONES[args.variant])}"
        )
    args.output_stride = args.output_stride or DEFAULT_OUTPUT_STRIDE[args.variant]
    if args.variant == "v1" and args.output_stride != 8:
        parser.error("DeepLab v1 (LargeFOV) has output stride 8.")
    if args.learning_rate is None:  # Linear scaling with the batch size.
        args.learning_rate = (
            0.001 * args.batch_size / 20
            if args.variant == "v1"
            else 0.007 * args.batch_size / 16
        )
    if args.weight_decay is None:
        args.weight_decay = {"vgg16": 5e-4, "resnet50": 1e-4}.get(args.backbone, 4e-5)
    if args.batch_size == 1 and args.freeze_bn is False and args.variant != "v1":
        parser.error(
            "--batch-size 1 with --no-freeze-bn: batch norm over one image makes "
            "ASPP's image-pooling branch (one value per channel) exactly zero. Use "
            "--freeze-bn or a batch of 2 or more (the papers use 16)."
        )


def batch_norm_batch_size(args: argparse.Namespace, replicas: int) -> int:
    """Images behind each BN statistic: one replica's, or all with --sync-bn."""
    return args.batch_size * replicas if args.sync_bn else args.batch_size


def resolve_freeze_bn(args: argparse.Namespace, replicas: int) -> None:
    """Default --freeze-bn: on when BN would see fewer than MIN_BN_BATCH images."""
    if args.freeze_bn is None:
        args.freeze_bn = batch_norm_batch_size(args, replicas) < MIN_BN_BATCH


def warn_about_recipe(args: argparse.Namespace, replicas: int = 1) -> None:
    """Warn when batch size and BN mode are not what the papers do."""
    if args.variant == "v1":  # VGG-16 has no batch norm.
        return
    bn_batch = batch_norm_batch_size(args, replicas)
    if not args.freeze_bn and bn_batch < MIN_BN_BATCH:
        warnings.warn(
            f"Training batch norm with batches of {bn_batch}: its "
            f"statistics will be noisy. The papers update BN only with batches of "
            f"16 and freeze it otherwise (--freeze-bn).",
            stacklevel=2,
        )
    if args.freeze_bn and args.backbone_weights is None:
        warnings.warn(
            "--freeze-bn with --backbone-weights none: BN keeps its initial "
            "statistics (mean 0, variance 1) and never learns them. Use "
            "--no-freeze-bn with a batch of 12 or more.",
            stacklevel=2,
        )
    if args.freeze_bn and bn_batch >= MIN_BN_BATCH:
        warnings.warn(
            f"--freeze-bn with batches of {bn_batch}: the papers train BN "
            "at this batch size (--no-freeze-bn).",
            stacklevel=2,
        )


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    strategy = training.set_up(args, f"deeplab_{args.variant}")
    dataset = cli.resolve_dataset(args)
    resolve_freeze_bn(args, strategy.num_replicas_in_sync)
    warn_about_recipe(args, strategy.num_replicas_in_sync)
    train_ds, val_ds, steps_per_epoch = training.make_datasets(
        args, dataset, input_size_rule(args)
    )

    with strategy.scope():  # Variables live on every replica (tf.distribute).
        model = build_deeplab(
            dataset.num_classes,
            variant=args.variant,
            backbone=args.backbone,
            output_stride=args.output_stride,
            backbone_weights=training.backbone_weights(args),  # None with --init-from
            multi_grid=args.multi_grid,
            aspp_atrous=args.aspp_atrous,
            resnet_blocks=args.resnet_blocks,
            head_filters=args.head_filters,
            input_shape=(None, None, args.input_channels),
            band_mean=dataset.image_format.band_mean,  # None: RGB, as the backbone.
            band_std=dataset.image_format.band_std,
        )
        training.init_from(model, args)  # --init-from: a trained model's weights.
        if args.freeze_bn and args.variant != "v1":  # VGG-16 has no batch norm.
            print(f"Froze {freeze_batch_norm(model)} batch norm layers (--freeze-bn).")
        print(
            f"{model.name}: learning rate {args.learning_rate:g}, weight decay "
            f"{args.weight_decay:g}, output stride {args.output_stride}"
        )
        iou = ConfusionMatrix(dataset.num_classes)  # result(): the mean IoU
        model.compile(
            # The papers' recipe: SGD, momentum 0.9, poly schedule (power 0.9)
            # from the rate resolve_defaults scaled to the batch.
            optimizer=training.make_optimizer(args, args.epochs * steps_per_epoch),
            # --loss (cross-entropy by default) on logits upsampled to the
            # image, void ignored.
            loss=make_loss(args.loss),
            metrics=[iou],
            jit_compile=cli.JIT_COMPILE[args.jit_compile],
        )

    callbacks = training.make_callbacks(args, iou, dataset.class_names)
    with training.resumable(args):  # Ctrl-C: says what is saved, how to resume.
        history = training.fit(
            model,
            train_ds,
            epochs=args.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_ds,
            validation_steps=args.val_steps,
            callbacks=callbacks,
            sync_bn=args.sync_bn,
        )
        return training.save_results(model, args, dataset, val_ds, history, iou)


if __name__ == "__main__":
    cli.run_cli(main)
