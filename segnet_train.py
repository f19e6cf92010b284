"""Train SegNet on PASCAL VOC 2012 or CamVid (or the built-in `shapes`).

    bash data/voc_download.sh
    python segnet_train.py --epochs 50
    python segnet_train.py --dataset camvid --data-dir data/CamVid \
        --class-weighting median --epochs 100   # the paper's setting
    python segnet_train.py --dataset shapes --variant basic --crop-size 64 \
        --batch-size 8 --epochs 12                         # a CPU demo
    python segnet_train.py --dataset camvid --variant basic --image-scale 0.5 \
        --crop-size 176 --scale-range 0.75 1.5 --batch-size 8 --optimizer adam \
        --learning-rate 2e-3 --loss dice --epochs 6 \
        --steps-per-epoch 36                  # CamVid: see the README's Results

The demo (SegNet-Basic from scratch, the default SGD recipe) validates in step
with training but learns slowly: val mean IoU 0.31 after 12 epochs (measured),
shapes found but speckled with other classes; about 4 minutes per epoch on 2
CPU cores shared with other jobs (1.8 s per step of 8 images, measured).

SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017,
https://arxiv.org/abs/1511.00561) is an encoder-decoder whose one new idea is
how the decoder upsamples. Each encoder max-pooling remembers *where* each
maximum was (the "max-pooling indices", two bits per 2x2 window); the matching
decoder stage puts its values back at exactly those positions and leaves zeros
elsewhere (Fig. 3), then convolutions fill the zeros in. Boundaries come back
where the encoder saw them, without learning any upsampling weights and
without carrying whole encoder feature maps across as U-Net does.

That is what this script builds: `MaxPoolingWithArgmax2D` and `MaxUnpooling2D`
in `common/layers.py`. Most Keras "SegNet"s replace the unpooling with
`UpSampling2D`, which copies each value into all four positions; here that is
only the ablation `--upsampling nearest`, to measure what the indices bring.

Two networks from the paper (`--variant`):
- `vgg16` (SegNet, Fig. 2): the 13 convolutions of VGG-16 as encoder (with the
  layer names of `keras.applications.VGG16`, initialised from ImageNet by
  default), batch norm + ReLU after each, five pooling layers that keep their
  indices, and a mirrored decoder. 29.4M parameters.
- `basic` (SegNet-Basic, Sec. 3.1): four encoder and four decoder stages of 64
  channels with 7x7 kernels, no biases, and no ReLU in the decoder. 1.4M
  parameters; trained from scratch.

Any input size works: pooling pads an odd row or column and unpooling
restores the exact size, so CamVid is trained and scored at its full 360x480
and VOC images need no padding to a multiple of 32.

Training recipe. The paper trains with SGD, a fixed learning rate of 0.1,
momentum 0.9 and batches of 12, shuffled every epoch, and on CamVid weights the
loss by median-frequency class balancing (Sec. 3.2; here
`--class-weighting median`). Those are this script's defaults, except
that the learning rate follows the shared poly schedule (`--lr-schedule
constant` gives the paper's fixed rate) so that the last epochs settle; the
best checkpoint by validation mean IoU is kept either way. The training crop
is 360 pixels square (CamVid's height) with the shared random scale, crop and
flip, where the paper trains on whole 360x480 CamVid frames; evaluation scores
whole images at their own size.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from common import stops

if __name__ == "__main__":  # Before the slow imports: any stop ends in one line.
    stops.install()

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
import keras
from keras import layers

from common import cli, training
from common.backbones import (
    adapt_first_convolution,
    copy_weights_by_name,
    load_application,
)
from common.layers import (
    BN_MOMENTUM,
    CaffeNormalization,
    CropToMatch,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    conv_bn_relu,
    normalize_images,
)
from common.losses import make_loss
from common.metrics import ConfusionMatrix

# VGG-16's convolutions per block (Simonyan & Zisserman 2015, Table 1, config D).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512,) * 3)
# The decoder mirrors them, deepest block first; each block's last convolution
# already has the channels of the next, shallower level (Fig. 2). The logits
# convolution follows the last block.
VGG16_DECODER_BLOCKS = (
    (512, 512, 512),
    (512, 512, 256),
    (256, 256, 128),
    (128, 64),
    (64,),
)
BASIC_DEPTH = 4
BASIC_FILTERS = 64
BASIC_KERNEL_SIZE = 7


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def input_size_rule(args: argparse.Namespace) -> Callable[[int], int]:
    """SegNet takes every size: pooling pads odd sizes, unpooling restores them."""
    return lambda size: size


def encoder_pool(x, name: str):
    """Max-pool by 2 and keep what the decoder needs: `(x, (indices, x_before))`."""
    pooled, indices = MaxPoolingWithArgmax2D(name=name)(x)
    return pooled, (indices, x)


def upsample(x, pooling, upsampling: str, name: str):
    """Undo one encoder pooling: with its indices, or (ablation) by repetition.

    `pooling` is `(indices, x_before)` from `encoder_pool`; `x_before` fixes the
    output size, so an odd size pooled with padding comes back exactly.
    """
    indices, before_pooling = pooling
    if upsampling == "indices":
        return MaxUnpooling2D(name=f"{name}_unpool")([x, indices, before_pooling])
    x = layers.UpSampling2D(2, name=f"{name}_upsample")(x)
    # Repeating 23 rows gives 46; the pooling padded at the bottom, so crop there.
    return CropToMatch(name=f"{name}_crop")([x, before_pooling])


def vgg16_encoder(x):
    """VGG-16's 13 convolutions, each + BN + ReLU, and 5 index-keeping poolings.

    Layer names are those of `keras.applications.VGG16` (`block3_conv2`, ...)
    so that its weights can be copied by name. Returns the bottleneck
    `(batch, h/32, w/32, 512)` (sizes rounded up) and the five poolings,
    shallowest first.
    """
    poolings = []
    for block, block_filters in enumerate(VGG16_BLOCKS, start=1):
        for conv, filters in enumerate(block_filters, start=1):
            x = conv_bn_relu(x, filters, name=f"block{block}_conv{conv}")
        x, pooling = encoder_pool(x, name=f"block{block}_pool")
        poolings.append(pooling)  # x: (batch, h/2^block, w/2^block, filters)
    return x, poolings


def vgg16_decoder(x, poolings, upsampling: str):
    """The mirror of `vgg16_encoder`: upsample, then conv + BN + ReLU (Fig. 2)."""
    for block, block_filters in zip(range(5, 0, -1), VGG16_DECODER_BLOCKS):
        x = upsample(x, poolings[block - 1], upsampling, name=f"decoder{block}")
        for conv, filters in enumerate(block_filters, start=1):
            x = conv_bn_relu(x, filters, name=f"decoder{block}_conv{conv}")
    return x  # (batch, h, w, 64)


def basic_encoder(x):
    """SegNet-Basic's encoder: 4 x (7x7 conv, 64 channels, BN, ReLU, pool)."""
    poolings = []
    for stage in range(1, BASIC_DEPTH + 1):
        x = conv_bn_relu(
            x, BASIC_FILTERS, BASIC_KERNEL_SIZE, name=f"encoder{stage}_conv"
        )
        x, pooling = encoder_pool(x, name=f"encoder{stage}_pool")
        poolings.append(pooling)  # x: (batch, h/2^stage, w/2^stage, 64)
    return x, poolings


def basic_decoder(x, poolings, upsampling: str):
    """SegNet-Basic's decoder: 4 x (upsample, 7x7 conv, BN), no ReLU (Sec. 3.1)."""
    for stage in range(BASIC_DEPTH, 0, -1):
        x = upsample(x, poolings[stage - 1], upsampling, name=f"decoder{stage}")
        x = layers.Conv2D(
            BASIC_FILTERS,
            BASIC_KERNEL_SIZE,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"decoder{stage}_conv",
        )(x)
        x = layers.BatchNormalization(
            momentum=BN_MOMENTUM, name=f"decoder{stage}_conv_bn"
        )(x)
    return x  # (batch, h, w, 64)


def build_segnet(
    num_classes: int,
    variant: str = "vgg16",
    backbone_weights: str | None = None,
    upsampling: str = "indices",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
) -> keras.Model:
    """Return SegNet (Fig. 2) or SegNet-Basic, mapping images to per-pixel logits.

    Images: float32 `(batch, h, w, 3)`, RGB in [0, 255], any h and w. Logits:
    float32 `(batch, h, w, num_classes)`. Images that are not RGB
    (`input_shape` with their bands) are standardised with `band_mean` and
    `band_std` instead of Caffe's preprocessing.

    `backbone_weights` ("imagenet", a file of `keras.applications.VGG16`
    weights, or None) initialises the `vgg16` encoder; the decoder always
    starts random. `upsampling="nearest"` swaps the index unpooling for
    `UpSampling2D`, the ablation the paper argues against.
    """
    if variant not in ("vgg16", "basic"):
        raise ValueError(f"variant must be 'vgg16' or 'basic', not {variant!r}")
    if upsampling not in ("indices", "nearest"):
        raise ValueError(
            f"upsampling must be 'indices' or 'nearest', not {upsampling!r}"
        )
    if variant == "basic" and backbone_weights is not None:
        raise ValueError("SegNet-Basic has no pretrained backbone; use weights None.")
    inputs = keras.Input(input_shape, name="image")
    # Caffe-style preprocessing, as VGG-16's ImageNet weights expect.
    x = normalize_images(
        inputs, CaffeNormalization(name="caffe_normalization"), band_mean, band_std
    )
    if variant == "vgg16":
        x, poolings = vgg16_encoder(x)
        x = vgg16_decoder(x, poolings, upsampling)
        logits_kernel_size = 3  # As conv1_1_D of the authors' Caffe model.
    else:
        x, poolings = basic_encoder(x)
        x = basic_decoder(x, poolings, upsampling)
        logits_kernel_size = 1  # As the authors' SegNet-Basic classifier.
    # Logits stay float32 even under a mixed-precision policy.
    logits = layers.Conv2D(
        num_classes,
        logits_kernel_size,
        padding="same",
        dtype="float32",
        name="logits",
    )(x)
    model = keras.Model(inputs, logits, name=f"segnet_{variant}")
    if backbone_weights is not None:
        load_vgg16_weights(model, backbone_weights)
    return model


def load_vgg16_weights(model: keras.Model, backbone_weights: str) -> None:
    """Copy VGG-16's convolution kernels into the encoder layers of the same name.

    `backbone_weights` is "imagenet" (downloaded once by Keras) or the path of
    a file that `keras.applications.VGG16(include_top=False)` loads. Our
    encoder convolutions have no bias, so VGG's biases are left out: the
    batch norm right after each convolution subtracts any per-channel
    constant anyway. For images that are not RGB, conv1_1 is adapted to their
    bands (`adapt_first_convolution`).
    """
    vgg = load_application("vgg16", backbone_weights)
    copy_weights_by_name(vgg, model)
    adapt_first_convolution(vgg, model, "vgg16")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description="Train SegNet (Badrinarayanan et al. 2017) for semantic "
        "segmentation, with max-pooling indices.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--variant",
        choices=["vgg16", "basic"],
        default="vgg16",
        help="vgg16: SegNet, 29.4M parameters; basic: SegNet-Basic, 4 stages of "
        "64 channels with 7x7 kernels, 1.4M (default: %(default)s)",
    )
    model.add_argument(
        "--upsampling",
        choices=["indices", "nearest"],
        default="indices",
        help="indices: unpool with the encoder's max-pooling indices (SegNet); "
        "nearest: UpSampling2D, an ablation (default: %(default)s)",
    )
    model.add_argument(
        "--backbone-weights",
        type=cli.backbone_weights,
        default=argparse.SUPPRESS,  # Not given: the variant's default.
        metavar="imagenet|none|PATH",
        help="encoder initialisation for --variant vgg16: imagenet (downloaded "
        "once), none (random), or a keras.applications.VGG16(include_top=False) "
        "weights file (default: imagenet for vgg16, none for basic)",
    )
    cli.add_training_args(parser)
    # The paper's recipe (Sec. 3.2): SGD, lr 0.1, momentum 0.9, batches of 12.
    parser.set_defaults(
        optimizer="sgd", learning_rate=0.1, momentum=0.9, batch_size=12, crop_size=360
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = cli.parse(parser, argv)
    cli.check_crop_size(parser, args.crop_size, input_size_rule(args))
    if "backbone_weights" not in vars(args):  # The variant's default.
        args.backbone_weights = "imagenet" if args.variant == "vgg16" else None
    elif args.variant == "basic" and args.backbone_weights is not None:
        parser.error("--variant basic has no pretrained backbone; drop the flag.")
    cli.check_backbone_weights(args.backbone_weights)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    strategy = training.set_up(args, f"segnet_{args.variant}")
    dataset = cli.resolve_dataset(args)
    # The model first: a failed ImageNet download should not wait for the data.
    with strategy.scope():  # Variables live on every replica (tf.distribute).
        model = build_segnet(
            dataset.num_classes,
            variant=args.variant,
            backbone_weights=training.backbone_weights(args),  # None with --init-from
            upsampling=args.upsampling,
            input_shape=(None, None, args.input_channels),
            band_mean=dataset.image_format.band_mean,  # None: RGB, Caffe's way.
            band_std=dataset.image_format.band_std,
        )
        training.init_from(model, args)  # --init-from: a trained model's weights.
    train_ds, val_ds, steps_per_epoch = training.make_datasets(
        args, dataset, input_size_rule(args)
    )

    with strategy.scope():
        iou = ConfusionMatrix(dataset.num_classes)  # result(): the mean IoU
        model.compile(
            # Sec. 3.2: SGD with momentum 0.9 (the defaults of make_parser).
            optimizer=training.make_optimizer(args, args.epochs * steps_per_epoch),
            # --loss (cross-entropy by default), void ignored; --class-weighting
            # median weighs each pixel by its class (the dataset's third element).
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
