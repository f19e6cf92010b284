"""Train a U-Net on PASCAL VOC 2012 (or the built-in `shapes`, or your own masks).

    bash data/voc_download.sh
    python unet_train.py --epochs 50
    python unet_train.py --dataset shapes --epochs 8 --filters 16 32 64 128 \
        --crop-size 64 --learning-rate 2e-3 --scale-range 1 1    # demo, 4 CPU minutes
    python unet_train.py --padding valid --no-batch-norm          # the paper's network
    python unet_train.py --dataset camvid --filters 16 32 64 128 --image-scale 0.5 \
        --crop-size 192 --scale-range 0.75 1.5 --batch-size 8 --optimizer adam \
        --learning-rate 2e-3 --loss dice --epochs 18 \
        --steps-per-epoch 46             # CamVid: see the README's Results

U-Net (Ronneberger, Fischer and Brox, MICCAI 2015, https://arxiv.org/abs/1505.04597)
is an encoder-decoder: a contracting path that doubles the channels at each of
four 2x2 max-poolings, and an expansive path that undoes each pooling with a
2x2 "up-convolution", halves the channels, and concatenates the encoder's
feature map of the same level ("copy and crop"), so fine detail skips past the
bottleneck.

The paper uses unpadded ("valid") 3x3 convolutions, so the output is smaller
than the input (572x572 in, 388x388 out) and skips must be cropped. That is
`--padding valid`; its labels are centre-cropped to the output in training, and
evaluation mirrors each image outwards by the 92-pixel margin (the paper's
overlap-tile strategy) so that every pixel is still scored. The default,
`--padding same`, keeps input and output the same size, which suits VOC's
varied image sizes. Batch norm (not in the 2015 paper) is on by default and
`--no-batch-norm` gives the original.
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

from common import cli, training, voc
from common.layers import CropToMatch, conv_bn_relu, normalize_images
from common.losses import make_loss
from common.metrics import ConfusionMatrix

PAPER_FILTERS = (64, 128, 256, 512)


def double_conv(x, filters: int, padding: str, batch_norm: bool, name: str):
    """Two 3x3 convolutions, each followed by ReLU (Fig. 1's pair of blue arrows)."""
    x = conv_bn_relu(
        x, filters, padding=padding, batch_norm=batch_norm, name=f"{name}_conv1"
    )
    return conv_bn_relu(
        x, filters, padding=padding, batch_norm=batch_norm, name=f"{name}_conv2"
    )


def build_unet(
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    padding: str = "same",
    batch_norm: bool = True,
    filters: Sequence[int] = PAPER_FILTERS,
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
) -> keras.Model:
    """Return the U-Net of Fig. 1, mapping images in [0, 255] to per-pixel logits.

    `filters` are the channels of the contracting levels; the bottleneck has
    twice the last (1024 in the paper). With `padding="valid"` the output is
    smaller than the input by `2 * label_margin(len(filters))` pixels. Images
    that are not RGB (`input_shape` with their bands) are standardised with
    `band_mean` and `band_std` instead of scaled to [-1, 1].
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
    inputs = keras.Input(input_shape, name="image")
    x = normalize_images(
        inputs,
        layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range"),
        band_mean,
        band_std,
    )

    skips = []
    for level, level_filters in enumerate(filters, start=1):  # contracting path
        x = double_conv(x, level_filters, padding, batch_norm, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)  # (b, h/2^level, ...)

    x = double_conv(x, 2 * filters[-1], padding, batch_norm, "bottleneck")

    for level in range(len(filters), 0, -1):  # expansive path
        level_filters = filters[level - 1]
        # 2x2 up-convolution that halves the number of feature channels.
        x = layers.Conv2DTranspose(
            level_filters, 2, strides=2, name=f"up{level}_upconv"
        )(x)
        skip = CropToMatch(name=f"up{level}_crop")([skips[level - 1], x])
        x = layers.Concatenate(name=f"up{level}_concat")([skip, x])
        x = double_conv(x, level_filters, padding, batch_norm, f"up{level}")

    # Logits stay float32 even under a mixed-precision policy.
    logits = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="unet")


def valid_output_size(input_size: int, depth: int = 4) -> int | None:
    """Output size of the valid-padding U-Net, or None if `input_size` does not fit.

    Each level loses 4 pixels to its two 3x3 convolutions, and every 2x2
    pooling needs an even size (Sec. 3: "select the input tile size such that
    all 2x2 max-pooling operations are applied to a layer with an even x- and
    y-size"). 572 -> 388 for the paper's depth of 4.
    """
    size = input_size
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4  # bottleneck
    for _ in range(depth):
        size = 2 * size - 4
    return size if size > 0 else None


def valid_padding_input_size(min_size: int, depth: int = 4) -> int:
    """Smallest input >= `min_size` that the valid-padding U-Net accepts."""
    size = min_size
    while valid_output_size(size, depth) is None:
        size += 1
    return size


def label_margin(depth: int = 4) -> int:
    """Pixels the valid-padding U-Net loses on each side: 92 for depth 4."""
    size = valid_padding_input_size(8 * 2**depth, depth)
    return (size - valid_output_size(size, depth)) // 2


def make_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description="Train U-Net (Ronneberger et al. 2015) for semantic segmentation.",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--padding",
        choices=["same", "valid"],
        default="same",
        help="valid: the paper's unpadded convolutions with copy-and-crop (output "
        "smaller than input); same: output the size of the input "
        "(default: %(default)s)",
    )
    model.add_argument(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch norm after every convolution (--no-batch-norm: the 2015 paper)",
    )
    model.add_argument(
        "--filters",
        type=cli.positive_int,
        nargs="+",
        default=list(PAPER_FILTERS),
        help="channels of each contracting level; the bottleneck has twice the last "
        "(default: 64 128 256 512 as in the paper; 16 32 64 128 for a quick CPU run)",
    )
    cli.add_training_args(parser)
    cli.describe_default(
        parser, "crop_size", "256 for --padding same, 572 (the paper's tile) for valid"
    )
    return parser


def input_size_rule(args: argparse.Namespace) -> Callable[[int], int]:
    """The sizes this U-Net takes: any multiple of 2^depth, or valid-padding tiles.

    Returns `rule(size)`, the smallest size >= `size` that the network takes.
    """
    depth = len(args.filters)
    if args.padding == "valid":
        return lambda size: valid_padding_input_size(size, depth)
    return lambda size: voc.round_up(size, 2**depth)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = cli.parse(parser, argv)
    if args.crop_size is None:  # The paper's 572 tile for valid, else VOC-sized.
        args.crop_size = 572 if args.padding == "valid" else 256
    cli.check_crop_size(parser, args.crop_size, input_size_rule(args))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    strategy = training.set_up(args, "unet")
    dataset = cli.resolve_dataset(args)

    margin = label_margin(len(args.filters)) if args.padding == "valid" else 0
    train_ds, val_ds, steps_per_epoch = training.make_datasets(
        args, dataset, input_size_rule(args), label_margin=margin
    )

    with strategy.scope():  # Variables live on every replica (tf.distribute).
        model = build_unet(
            dataset.num_classes,
            input_shape=(None, None, args.input_channels),
            padding=args.padding,
            batch_norm=args.batch_norm,
            filters=args.filters,
            band_mean=dataset.image_format.band_mean,  # None: RGB, to [-1, 1].
            band_std=dataset.image_format.band_std,
        )
        training.init_from(model, args)  # --init-from: a trained model's weights.
        iou = ConfusionMatrix(dataset.num_classes)  # result(): the mean IoU
        model.compile(
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
