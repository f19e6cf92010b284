"""Train FCN-32s, FCN-16s or FCN-8s (VGG-16) on PASCAL VOC 2012.

    bash data/voc_download.sh
    python fcn_train.py --variant 8s --epochs 50
    python fcn_train.py --dataset shapes --backbone-weights none --width 0.125 \
        --optimizer adam --learning-rate 1e-3 --crop-size 64 --epochs 10    # demo

The demo trains FCN-8s at 1/8 of VGG-16's width from scratch on a CPU: it finds
the shapes and gets circles and squares, and confuses the thinner classes (val
mean IoU 0.57 after 10 epochs, measured).

CamVid from scratch in 30 CPU minutes, at half resolution (`--image-scale`),
scored at 360x480 by `evaluate.py` (its scores and time: the README's Results,
every run: docs/camvid.md):

    python fcn_train.py --dataset camvid --variant 8s --width 0.25 \
        --backbone-weights none --image-scale 0.5 --crop-size 192 \
        --scale-range 0.75 1.5 --batch-size 8 --optimizer adam \
        --learning-rate 5e-4 --weight-decay 0 --lr-schedule poly \
        --loss '0.5*ce+lovasz' --epochs 10 --steps-per-epoch 90

The paper's staged recipe: train the coarse net, then each finer one from it
with the learning rate lowered 100x (Sec. 4.2):

    python fcn_train.py --variant 32s --output-dir runs/fcn32s
    python fcn_train.py --variant 16s --init-from runs/fcn32s/best.keras \
        --learning-rate 1e-6 --output-dir runs/fcn16s
    python fcn_train.py --variant 8s --init-from runs/fcn16s/best.keras \
        --learning-rate 1e-8 --output-dir runs/fcn8s

Fully Convolutional Networks (Long, Shelhamer and Darrell, CVPR 2015,
https://arxiv.org/abs/1411.4038; PAMI 2016, https://arxiv.org/abs/1605.06211)
turn an ImageNet classifier into a segmenter with two ideas:

1. Convolutionalization (Sec. 3.1): VGG-16's fully connected layers are
   convolutions whose kernel covers their whole input. fc1 (25088 -> 4096 on a
   flattened 7x7x512 map) *is* a 7x7x512 -> 4096 convolution, fc6 here, with
   the same weights reshaped; fc2 is a 1x1 convolution, fc7. The network then
   accepts any image size and outputs a coarse map of class scores, one per
   32x32 block of pixels, instead of one score vector.
2. Upsampling by backwards strided convolution (Sec. 3.3): a
   `Conv2DTranspose` with stride f, initialised to bilinear interpolation
   (`common.layers.BilinearUpsampling`), brings the scores back to pixels and
   is learned with the rest.

FCN-32s upsamples the fc7 scores by 32 in one step. FCN-16s and FCN-8s first
add the scores of the finer pool4 (and pool3) maps (Sec. 4.2, "combining what
and where"); their new score layers start at zero, so a net initialised from
the coarser one (`--init-from`) starts out computing exactly what it did.

Geometry. The reference Caffe nets pad conv1_1 by 100 pixels and crop the
upsampled maps at offsets 5, 9 and 31 to align them. This script instead uses
`same` padding everywhere and pads the image, inside the model, at the bottom
and right to a multiple of 32 (then crops the logits back). Every stride-s map
then has exactly `size / s` cells, cell (i, j) covers pixels [s*i, s*(i+1)),
and a bilinear `Conv2DTranspose(kernel 2f, stride f, padding "same")` maps one
grid onto the next with no offsets to get wrong (tests/test_fcn.py probes it).
The price is that fc6's 7x7 kernel sees zeros beyond the border of pool5.

Preprocessing is the one VGG-16's ImageNet weights were trained with (Caffe
style: RGB -> BGR, minus the BGR mean pixel, no scaling), done by the first
layer of the model, so `model.predict` takes raw RGB images in [0, 255].
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
from keras import layers, ops

from common import cli, training, voc
from common.backbones import (
    adapt_first_convolution,
    copy_weights_by_name,
    load_application,
)
from common.layers import (
    BilinearUpsampling,
    CaffeNormalization,
    CropToMatch,
    MatmulConv2D,
    PadToMultiple,
    normalize_images,
)
from common.losses import make_loss
from common.metrics import ConfusionMatrix

VARIANTS = ("32s", "16s", "8s")
VGG_FILTERS = (64, 128, 256, 512, 512)  # Channels of VGG-16's five conv blocks.
VGG_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
FC_UNITS = 4096
MEMORY_NOTE = """\
Memory: fc6 alone holds 7*7*512*4096 + 4096 = 102.8M of FCN's 134M parameters
(411 MB in float32, plus as much again for its gradient and its momentum), and
VGG-16's full-resolution conv1/conv2 activations grow with batch * crop^2. If you
run out of GPU memory, lower --crop-size (default 320; e.g. 256), add
--mixed-precision, or lower --batch-size (default 20, the paper's) and
--learning-rate in proportion (1e-4 is for 20 images; the PAMI version trains
with batch 1 and --momentum 0.99)."""


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


def scaled(channels: int, width: float) -> int:
    """`channels * width`, at least 1: `--width` shrinks the net for CPU runs."""
    return max(1, round(channels * width))


def vgg16_features(x, width: float = 1.0):
    """VGG-16's 13 convolutions, named as in `keras.applications.VGG16`.

    Returns pool3, pool4 and pool5: `(B, H/8, W/8, 256)`, `(B, H/16, W/16,
    512)` and `(B, H/32, W/32, 512)` at `width=1`.
    """
    pools = []
    for block, (filters, convs) in enumerate(
        zip(VGG_FILTERS, VGG_CONVS_PER_BLOCK), start=1
    ):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(
                scaled(filters, width),
                3,
                padding="same",
                activation="relu",
                name=f"block{block}_conv{conv}",
            )(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)  # (B, H/2^block, ...)
        pools.append(x)
    return pools[2], pools[3], pools[4]


def convolutional_classifier(x, width: float = 1.0):
    """VGG-16's fc1 and fc2 as convolutions, fc6 and fc7 (Sec. 3.1).

    fc6 is a 7x7 convolution: at each position it sees the 7x7x512 window that
    fc1 saw as its whole, flattened input. Dropout as in the classifier.
    """
    units = scaled(FC_UNITS, width)
    # MatmulConv2D is Conv2D, computed on a CPU as one matrix product: on this
    # tiny stride-32 map, TensorFlow's own CPU kernels are several times slower.
    x = MatmulConv2D(units, 7, padding="same", activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="drop6")(x)
    x = MatmulConv2D(units, 1, activation="relu", name="fc7")(x)
    return layers.Dropout(0.5, name="drop7")(x)  # (B, H/32, W/32, 4096)


def score(x, num_classes: int, name: str):
    """1x1 convolution to class scores, zero-initialised as in the paper.

    Sec. 4.3 zero-initialises the class scoring layer (random initialisation
    gave neither better results nor faster convergence), and Sec. 4.2 the
    skip scores, so that a finer net begins as the coarser one it was
    initialised from.
    """
    return layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)(x)


def bilinear_upsampling(x, factor: int, trainable: bool, name: str):
    """Upsample class scores by `factor` with a bilinear-initialised transposed conv.

    Kernel 2 * factor, stride factor, `same` padding: output size is exactly
    `factor` times the input. No bias, as in the reference nets.
    """
    return layers.Conv2DTranspose(
        x.shape[-1],
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        trainable=trainable,
        name=name,
    )(x)


def fuse_skips(scores, pool4, pool3, variant: str, trainable_upsampling: bool):
    """Sec. 4.2: add finer pool4 (16s) and pool3 (8s) scores, then upsample.

    `scores` are the fc7 class scores at stride 32. Returns full-resolution
    (padded) logits `(B, H, W, num_classes)`.
    """
    num_classes = scores.shape[-1]

    def upsample(x, factor, name):
        return bilinear_upsampling(x, factor, trainable_upsampling, name)

    if variant == "32s":
        return upsample(scores, 32, "upscore")  # (B, H, W, classes)
    x = upsample(scores, 2, "upscore2")  # (B, H/16, W/16, classes)
    x = layers.Add(name="fuse_pool4")([x, score(pool4, num_classes, "score_pool4")])
    if variant == "16s":
        return upsample(x, 16, "upscore16")
    x = upsample(x, 2, "upscore_pool4")  # (B, H/8, W/8, classes)
    x = layers.Add(name="fuse_pool3")([x, score(pool3, num_classes, "score_pool3")])
    return upsample(x, 8, "upscore8")


def build_fcn(
    num_classes: int,
    variant: str = "8s",
    backbone_weights: str | None = None,
    *,
    freeze_upsampling: bool = False,
    width: float = 1.0,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
) -> keras.Model:
    """Return FCN-`variant` on VGG-16, mapping RGB images in [0, 255] to logits.

    `backbone_weights`: None (random), "imagenet" or the path of a VGG-16
    weights file with its top (fc1/fc2) layers; the 13 convolutions and
    fc6/fc7 start from it. `width` scales every layer's channels (1.0: the
    paper; smaller only with `backbone_weights=None`). Any input size works:
    the image is padded to a multiple of 32 inside and the logits
    `(B, H, W, num_classes)` are cropped back to it. Images that are not RGB
    (`input_shape` with their bands) are standardised with `band_mean` and
    `band_std` instead of Caffe's preprocessing, and conv1_1 is adapted to
    their bands (`adapt_first_convolution`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if backbone_weights is not None and width != 1.0:
        raise ValueError("Pretrained VGG-16 weights need width=1.0.")
    # Load VGG-16 first, so that a failed download fails before the long build.
    vgg = None
    if backbone_weights is not None:
        vgg = load_application("vgg16", backbone_weights, include_top=True)

    images = keras.Input(input_shape, name="image")
    x = normalize_images(
        images, CaffeNormalization(name="caffe_normalization"), band_mean, band_std
    )
    x = PadToMultiple(32, name="pad_to_32")(x)
    pool3, pool4, pool5 = vgg16_features(x, width)
    x = convolutional_classifier(pool5, width)
    scores = score(x, num_classes, "score_fr")  # (B, H/32, W/32, classes)
    x = fuse_skips(scores, pool4, pool3, variant, not freeze_upsampling)
    # Logits stay float32 even under a mixed-precision policy.
    logits = CropToMatch("top_left", dtype="float32", name="logits")([x, images])
    model = keras.Model(images, logits, name=f"fcn{variant}")

    if vgg is not None:
        copy_vgg16_weights(vgg, model)
    return model


# --------------------------------------------------------------------------
# Initialisation: ImageNet VGG-16 (a coarser FCN: --init-from, common.training)
# --------------------------------------------------------------------------


def copy_vgg16_weights(vgg: keras.Model, model: keras.Model) -> None:
    """Copy VGG-16's convolutions by name and convolutionalize fc1/fc2 (Sec. 3.1).

    `Flatten` orders a 7x7x512 map as (row, column, channel), the order of a
    convolution kernel's first three axes, so fc1's (25088, 4096) kernel
    reshapes to fc6's (7, 7, 512, 4096) with no transposition.
    """
    copy_weights_by_name(vgg, model)  # The 13 convolutions, block1_conv1 ...
    adapt_first_convolution(vgg, model, "vgg16")  # block1_conv1, for other bands.
    for dense_name, conv_name in (("fc1", "fc6"), ("fc2", "fc7")):
        dense, conv = vgg.get_layer(dense_name), model.get_layer(conv_name)
        conv.kernel.assign(ops.reshape(dense.kernel, conv.kernel.shape))
        conv.bias.assign(dense.bias)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def input_size_rule(args: argparse.Namespace) -> Callable[[int], int]:
    """The model takes any size; multiples of 32 waste no padding inside it."""
    return lambda size: voc.round_up(size, 32)


def make_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description="Train FCN-32s/16s/8s (Long et al. 2015) on VGG-16 for semantic "
        "segmentation.",
        epilog=MEMORY_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--variant",
        choices=VARIANTS,
        default="8s",
        help="output stride of the finest skip: 32s (none), 16s (pool4), 8s (pool4 "
        "and pool3) (default: %(default)s)",
    )
    model.add_argument(
        "--backbone-weights",
        type=cli.backbone_weights,
        default="imagenet",
        help="imagenet (downloads 528 MB once), none (random), or the path of a "
        "VGG-16 weights file with its fc layers (default: %(default)s)",
    )
    model.add_argument(
        "--freeze-upsampling",
        action="store_true",
        help="keep every upsampling layer fixed at bilinear interpolation (default: "
        "learned, as in the paper; the reference nets fix only the last one)",
    )
    model.add_argument(
        "--width",
        type=cli.positive_float,
        default=1.0,
        help="multiply every layer's channels (default: %(default)s, the paper's "
        "VGG-16; 0.125 for a quick CPU run with --backbone-weights none)",
    )
    cli.add_training_args(parser)
    # The paper's optimisation (Sec. 4.3): SGD, momentum 0.9, minibatches of 20
    # images, a fixed learning rate of 1e-4 for VGG-16, weight decay 5e-4. Keras
    # applies weight decay decoupled from the gradient, where Caffe added it to
    # the gradient (so momentum amplified it); the paper found 5e-4 or 2e-4 both
    # fine. The paper trained on whole images; here a 320-pixel random crop.
    parser.set_defaults(
        optimizer="sgd",
        learning_rate=1e-4,
        momentum=0.9,
        weight_decay=5e-4,
        lr_schedule="constant",
        batch_size=20,
        crop_size=320,
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = cli.parse(parser, argv)
    cli.check_crop_size(parser, args.crop_size, input_size_rule(args))
    cli.check_backbone_weights(args.backbone_weights)
    if args.width != 1.0 and args.backbone_weights and not args.init_from:
        parser.error("--width other than 1 needs --backbone-weights none")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    strategy = training.set_up(args, f"fcn{args.variant}")
    dataset = cli.resolve_dataset(args)
    train_ds, val_ds, steps_per_epoch = training.make_datasets(
        args, dataset, input_size_rule(args)
    )

    with strategy.scope():  # Variables live on every replica (tf.distribute).
        model = build_fcn(
            dataset.num_classes,
            args.variant,
            backbone_weights=training.backbone_weights(args),  # None with --init-from
            freeze_upsampling=args.freeze_upsampling,
            width=args.width,
            input_shape=(None, None, args.input_channels),
            band_mean=dataset.image_format.band_mean,  # None: RGB, Caffe's way.
            band_std=dataset.image_format.band_std,
        )
        # --init-from: a trained FCN's weights, layer by name. The staged recipe
        # of Sec. 4.2 (16s from 32s, 8s from 16s) copies the backbone, fc6/fc7
        # and score_fr; the new skip scores stay zero, the upsampling bilinear.
        training.init_from(model, args)
        iou = ConfusionMatrix(dataset.num_classes)  # result(): the mean IoU
        model.compile(
            # Sec. 4.3: SGD, momentum 0.9, weight decay (the defaults of make_parser).
            optimizer=training.make_optimizer(args, args.epochs * steps_per_epoch),
            loss=make_loss(args.loss),  # --loss (default cross-entropy); void ignored.
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
