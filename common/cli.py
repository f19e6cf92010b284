"""The command line every script shares: flag types, flag groups, one-line errors.

A training script builds its parser from these pieces:

    parser = cli.ArgumentParser(description="Train U-Net ...")
    parser.add_argument_group("model").add_argument("--filters", ...)
    cli.add_training_args(parser)        # data, optimisation, scale, output
    args = cli.parse(parser, argv)       # keeps argv for results.json

and runs its `main` under `run_cli`, which prints bad input and Ctrl-C as one
line instead of a traceback. `evaluate.py`, `predict.py` and `export.py` take
the data flags (`add_dataset_args`) and `run_cli` from here without loading
anything of training. The `verify` command checks a dataset with the same flags:

    python -m common.cli verify data/VOCdevkit/VOC2012 --split train
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NoReturn

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
from common import cache, distribute, inference, shapes, stops, voc
from common.constants import IGNORE_LABEL, LOSS_TERMS
from common.errors import (
    DatasetError,
    InputError,
    TrainingInterrupted,
    WorkerLost,
)

# --jit-compile's choices, as `model.compile(jit_compile=...)` takes them.
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits with status 2.

    The scripts' usage text runs to twenty lines; someone who typed
    `--epochs 0` needs the one line that says what is wrong with it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------
# Flag types: argparse calls them on the text and reports their message
# --------------------------------------------------------------------------


def _number(text: str, kind: type, is_allowed: Callable, allowed: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not is_allowed(value):
        raise argparse.ArgumentTypeError(f"must be {allowed}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda value: value >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda value: value >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(text, float, lambda value: value > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, float, lambda value: value >= 0, "a number >= 0")


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1), e.g. a momentum."""
    return _number(text, float, lambda value: 0 <= value < 1, "a number in [0, 1)")


def mask_value(text: str) -> int:
    """argparse type: a value a uint8 mask pixel can hold, 0-255."""
    return _number(text, int, lambda value: 0 <= value <= 255, "an integer 0-255")


def loss_terms(text: str) -> dict[str, float]:
    """argparse type of --loss: "0.5*ce+lovasz" -> {"ce": 0.5, "lovasz": 1.0}.

    A sum of terms, each a name of LOSS_TERMS, at most once, with an optional
    "WEIGHT*" in front (WEIGHT > 0, default 1).
    """
    terms = {}
    for term in text.split("+"):
        weight, star, name = (part.strip() for part in term.rpartition("*"))
        if name not in LOSS_TERMS or name in terms:
            problem = "appears twice" if name in terms else "is not a loss term"
            raise argparse.ArgumentTypeError(
                f"{name!r} {problem} in {text!r}; give terms of "
                f"{', '.join(LOSS_TERMS)} joined by +, e.g. 0.5*ce+lovasz"
            )
        terms[name] = 1.0
        if star:
            terms[name] = _number(
                weight, float, lambda value: 0 < value < math.inf, "a weight > 0"
            )
    return terms


def tile_size(text: str) -> int | str:
    """argparse type of --tile: a whole number of pixels >= 1, or "crop"."""
    return (
        text
        if text == "crop"
        else _number(
            text, int, lambda value: value >= 1, "a size in pixels >= 1 or 'crop'"
        )
    )


def backbone_weights(text: str) -> str | None:
    """argparse type of --backbone-weights: "none" (any case) means random, None.

    Every builder takes `backbone_weights=None` for random weights, "imagenet",
    or a file; this is the one place where the flag's "none" becomes None.
    """
    return None if text.lower() == "none" else text


def check_backbone_weights(weights: str | None) -> None:
    """A --backbone-weights file must exist ("imagenet" and none need no file)."""
    if weights not in (None, "imagenet"):
        check_path(
            weights, "--backbone-weights", "file", "imagenet, none or a weights file"
        )


# --------------------------------------------------------------------------
# Help text and checks that need the parser
# --------------------------------------------------------------------------


def describe_default(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Say in `--help` what a computed default is, where argparse would say None."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = f"{action.help.split(' (default')[0]} (default: {text})"
            return
    raise ValueError(f"no flag stores into {dest!r}")


def check_crop_size(
    parser: argparse.ArgumentParser,
    crop_size: int,
    input_size_rule: Callable[[int], int],
) -> None:
    """`voc.check_crop_size` at parse time: exit 2 before any data or model is built."""
    try:
        voc.check_crop_size(crop_size, input_size_rule)
    except InputError as error:
        parser.error(f"argument {error}")


PATH_KINDS = {"file": os.path.isfile, "folder": os.path.isdir, "any": os.path.exists}


def check_path(path: str, flag: str, kind: str = "file", expected: str = "") -> str:
    """Refuse a path that is not there, or not a `kind`, in one line; return it.

    `kind` is "file", "folder" or "any"; `expected` says what belongs there
    (e.g. "a .keras file written by training"). For a missing path the
    message names the closest existing entries where the path goes astray,
    so that a pasted `runs/unet-shapes-TIME/best.keras` shows the real runs.
    """
    if PATH_KINDS[kind](path):
        return path
    expected = expected or f"a {kind}"
    if os.path.exists(path):
        found = "a folder" if os.path.isdir(path) else "a file"
        raise InputError(f"{flag} {path}: this is {found}; give {expected}.")
    raise InputError(
        f"{flag} {path}: no such file or folder.{closest_existing(path)} "
        f"Give {expected}."
    )


def closest_existing(path: str) -> str:
    """' Closest in runs/: runs/a, runs/b.' for the first missing part of `path`."""
    parent, missing = os.path.split(os.path.normpath(path))
    while parent and not os.path.isdir(parent):
        parent, missing = os.path.split(parent)
    folder = parent or os.curdir
    entries = sorted(os.listdir(folder))
    # A shared beginning ("unet-shapes-" of "unet-shapes-TIME"), else spelling.
    start = max(3, len(missing) // 2)
    names = [name for name in entries if name[:start] == missing[:start]][-3:]
    names = names or difflib.get_close_matches(missing, entries, 3, 0.6)
    if not names:
        return ""
    shown = ", ".join(os.path.join(parent, name) for name in names)
    return f" Closest in {folder}{os.sep}: {shown}."


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv` (default: the command line); keep it in `args.argv` for results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return args


# --------------------------------------------------------------------------
# Flag groups
# --------------------------------------------------------------------------


def add_dataset_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Flags that say which dataset to read (training, evaluate.py, verify)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        choices=["voc", "shapes", "folder", "camvid", "cache"],
        default="voc",
        help="voc: PASCAL VOC 2012 (bash data/voc_download.sh); shapes: the "
        "built-in synthetic set, generated on first use (seconds); folder: your "
        "own data, either SPLIT/images + SPLIT/masks or CamVid's SPLIT + "
        "SPLITannot; camvid: folder with CamVid's 11 class names and void 11 "
        "(default: %(default)s); cache: a folder written by python -m "
        "common.cli cache, which trains without TensorFlow (docs/gpu.md)",
    )
    data.add_argument(
        "--data-dir",
        help=f"dataset folder (default: {voc.VOC_DIR} for voc, data/shapes for "
        f"shapes, {voc.CAMVID_DIR} for camvid)",
    )
    data.add_argument(
        "--num-classes",
        type=positive_int,
        help="classes in your masks, void excluded (required with --dataset folder; "
        "default: 21 for voc, 6 for shapes, 11 for camvid)",
    )
    data.add_argument(
        "--ignore-index",
        type=mask_value,
        default=IGNORE_LABEL,
        help="mask value that means 'void, do not score' in your data; remapped to "
        "255 (CamVid: 11; default: %(default)s)",
    )
    data.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="names for --dataset folder, in class-index order (default: class_0 ...)",
    )
    data.add_argument(
        "--mask-values",
        choices=voc.MASK_VALUES,
        help="--dataset folder: binary = black-and-white masks, 0 -> class 0, 255 "
        "-> class 1 (needs --num-classes 2); index = grey value is the class "
        "(default: index, but masks of only 0 and 255 stop with an error)",
    )
    return data


def add_tile_args(parser: argparse.ArgumentParser) -> None:
    """`--tile`, `--tile-overlap`, `--tile-blend`, `--tile-batch-size` (evaluate.py,
    predict.py); without `--tile` the network sees each whole image, as before."""
    group = parser.add_argument_group(
        "tiles (large images, or a model trained on crops: the network sees one "
        "window at a time)"
    )
    group.add_argument(
        "--tile",
        type=tile_size,
        metavar="SIZE",
        help="predict overlapping SIZE x SIZE windows and blend their softmax, "
        "instead of the whole image at once; a multiple of 32 for a .keras model; "
        "'crop': the training run's --crop-size, from results.json "
        "(default: whole images)",
    )
    group.add_argument(
        "--tile-overlap",
        type=unit_interval,
        default=0.25,
        metavar="FRACTION",
        help="neighbouring windows share at least this fraction of a window, "
        "in [0, 1) (default: %(default)s)",
    )
    group.add_argument(
        "--tile-blend",
        choices=inference.TILE_BLENDS,
        default="gaussian",
        help="weight of a window's pixels, falling towards its edges: gaussian "
        "(nnU-Net, sigma 1/8 of the window) or linear (default: %(default)s)",
    )
    group.add_argument(
        "--tile-batch-size",
        type=positive_int,
        default=4,
        metavar="N",
        help="windows per network call (default: %(default)s)",
    )


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Add the data, optimisation, scale and output flags of every training script.

    A script sets its own defaults afterwards with `parser.set_defaults(...)`.
    """
    data = add_dataset_args(parser)
    data.add_argument("--train-split", default="train", help="default: %(default)s")
    data.add_argument("--val-split", default="val", help="default: %(default)s")
    data.add_argument(
        "--crop-size",
        type=positive_int,
        help="square training crop in pixels (default: %(default)s)",
    )
    data.add_argument(
        "--scale-range",
        type=positive_float,
        nargs=2,
        default=[0.5, 2.0],
        metavar=("MIN", "MAX"),
        help="random rescaling of training images before the crop, as DeepLab "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--image-scale",
        type=positive_float,
        default=1.0,
        metavar="FACTOR",
        help="resize every image (bilinear, antialiased) and mask (nearest) by "
        "this factor as it is loaded, for training and validation alike: 0.5 "
        "trains CamVid's 360x480 at 180x240, about four times faster a step. "
        "Validation then scores the resized masks; evaluate.py scores the model "
        "on the full-size masks, predicting at this scale and upsampling the "
        "softmax (default: %(default)s)",
    )
    data.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="images per replica (device); the global batch is this times the "
        "number of replicas (default: %(default)s)",
    )
    data.add_argument(
        "--cache",
        action="store_true",
        help="keep decoded images in memory after the first epoch (VOC train: ~1 GB)",
    )
    data.add_argument(
        "--input-channels",
        type=positive_int,
        metavar="N",
        help="bands of every image: 1 (grey), 3 (RGB), 4 (RGBA) or more (TIFF); "
        "the images must have them. Images that are not 8-bit RGB are "
        "standardised band by band with the training images' statistics "
        "(default: the first training image's; 3 for voc, shapes, camvid)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--init-from",
        metavar="PATH",
        help="start from a model trained by any of the scripts (RUN/best.keras): "
        "every layer whose name and weight shapes match is copied, the others "
        "keep their initialisation, such as the classifier when the number of "
        "classes differs. Fine-tuning a VOC model on your classes, and FCN's "
        "staged 32s -> 16s -> 8s training, start this way. The backbone's "
        "pretrained weights are then not loaded, and a resumed --output-dir "
        "restores its own weights instead (default: none)",
    )
    _add_optimisation_args(train)
    _add_scale_args(parser.add_argument_group("speed and scale"))
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-dir",
        help="where checkpoints, logs and results go (default: "
        "runs/SCRIPT-DATASET-TIME). "
        "Rerun with the same --output-dir to resume an interrupted run.",
    )
    output.add_argument(
        "--num-predictions",
        type=non_negative_int,
        default=6,
        help="validation images in predictions.png (default: %(default)s)",
    )


def _add_optimisation_args(train: argparse._ArgumentGroup) -> None:
    train.add_argument(
        "--epochs", type=positive_int, default=50, help="default: %(default)s"
    )
    train.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        help="training batches per epoch (default: one pass over the training split)",
    )
    train.add_argument(
        "--val-steps",
        type=positive_int,
        help="validation batches per epoch (default: the whole validation split)",
    )
    train.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default="adam",
        help="sgd uses --momentum (default: %(default)s)",
    )
    train.add_argument(
        "--learning-rate",
        type=positive_float,
        default=1e-3,
        help="initial learning rate for one replica's batch; multiplied by the "
        "number of replicas (linear scaling rule) (default: %(default)s)",
    )
    train.add_argument(
        "--momentum",
        type=unit_interval,
        default=0.9,
        help="SGD momentum (default: %(default)s)",
    )
    train.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=0.0,
        help="decoupled weight decay of the optimizer (default: %(default)s)",
    )
    train.add_argument(
        "--lr-schedule",
        choices=["poly", "constant"],
        default="poly",
        help="poly: lr * (1 - step/total)^0.9, as DeepLab (default: %(default)s)",
    )
    train.add_argument(
        "--class-weighting",
        choices=["none", "median"],
        default="none",
        help="median: weight each training pixel by median(freq)/freq of its class "
        "(median-frequency balancing, SegNet Sec. 3.2), counted once on the "
        "training masks, so thin and rare classes are not ignored "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--loss",
        type=loss_terms,
        default="ce",
        metavar="TERMS",
        help="what training minimises: ce (cross-entropy), focal (focal loss, "
        "gamma 2), dice (soft Dice), lovasz (Lovász-softmax over the batch), "
        "lovasz_image (Lovász-softmax per image), or a weighted sum such as "
        "ce+lovasz or 0.5*ce+lovasz; void pixels never count, and "
        "--class-weighting weighs ce, focal and dice (default: %(default)s)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the initial weights, dropout, the data order and the "
        "augmentation (Python, NumPy and TensorFlow). On CPU, two runs with one "
        "seed on one machine give exactly the same numbers; on GPU, some kernels "
        "(cuDNN's, atomic sums) add in a varying order, so runs can drift apart: "
        "use --deterministic. No seed gives the same numbers on other hardware, "
        "another TensorFlow, another --batch-size or number of devices "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic TensorFlow kernels "
        "(tf.config.experimental.enable_op_determinism): with one --seed, runs "
        "on one machine give exactly the same numbers, on GPU too. The cost is "
        "speed on GPU, where slower ordered kernels replace the fastest ones (on "
        "CPU no difference beyond noise); an op with no deterministic kernel "
        "stops the run with an error; and the numbers differ slightly from a "
        "run without the flag",
    )


def _add_scale_args(scale: argparse._ArgumentGroup) -> None:
    scale.add_argument(
        "--strategy",
        choices=distribute.STRATEGIES,
        default="auto",
        help="tf.distribute strategy; auto = mirrored when several GPUs are visible, "
        "else default (one device); multiworker = several machines, configured by "
        "TF_CONFIG, trained by a custom loop with --sync-bn forced on "
        "(docs/several-machines.md) (default: %(default)s)",
    )
    scale.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with several replicas, batch norm uses the statistics of the whole "
        "global batch instead of each replica's slice (an all-reduce per BN layer "
        "per step); no effect on one device (default: %(default)s)",
    )
    scale.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 compute on GPU (bfloat16 elsewhere), float32 logits and loss",
    )
    scale.add_argument(
        "--jit-compile",
        choices=list(JIT_COMPILE),
        default="auto",
        help="XLA for fit; auto = Keras' choice: on for one GPU, off on CPU and "
        "under tf.distribute (default: %(default)s)",
    )


# --------------------------------------------------------------------------
# From flags to a dataset
# --------------------------------------------------------------------------


def resolve_dataset(args: argparse.Namespace) -> voc.DatasetSpec:
    """Turn the data flags into a `DatasetSpec`, generating `shapes` if needed.

    A training run (its parser has --input-channels) also reads how its images
    are stored and their band statistics (`training_image_format`).
    """
    dataset = dataset_from_flags(args)
    if "input_channels" not in vars(args):
        return dataset
    return replace(dataset, image_format=training_image_format(args, dataset))


def training_image_format(
    args: argparse.Namespace, dataset: voc.DatasetSpec
) -> voc.ImageFormat:
    """The training images' `ImageFormat`, checked against --input-channels, printed.

    voc, shapes and camvid images are RGB. A folder's images are stored as its
    first training image (`voc.detect_image_format`, which measures each
    band's mean and std unless they are RGB). Sets `args.input_channels` to
    the bands, so that results.json records them.
    """
    if args.dataset == "folder":
        pairs = voc.list_pairs(dataset.data_dir, args.train_split, dataset.layout)
        image_format = voc.detect_image_format(
            [image_path for image_path, _ in pairs], args.input_channels
        )
    elif args.input_channels not in (None, 3):
        raise DatasetError(
            f"--input-channels {args.input_channels}: --dataset {args.dataset} has "
            "RGB images (3 bands); drop the flag."
        )
    else:
        image_format = voc.RGB
    args.input_channels = image_format.bands
    print(f"Images: {image_format.describe()}")
    return image_format


def dataset_from_flags(args: argparse.Namespace) -> voc.DatasetSpec:
    """The `DatasetSpec` the data flags name; its images are taken to be RGB."""
    if args.dataset == "shapes":
        data_dir = args.data_dir or shapes.DEFAULT_DIR
        if not shapes.is_shapes_dir(data_dir) or data_dir == shapes.DEFAULT_DIR:
            shapes.generate_shapes(data_dir)  # Rebuilds an outdated default folder.
        return voc.DatasetSpec(data_dir, "voc", shapes.SHAPES_CLASSES)
    if args.dataset == "voc":
        return voc.DatasetSpec(args.data_dir or voc.VOC_DIR, "voc", voc.VOC_CLASSES)
    if args.dataset == "cache":
        if not args.data_dir:
            raise DatasetError(
                "--dataset cache needs --data-dir, a folder written by "
                "python -m common.cli cache."
            )
        return cache.dataset_spec(args.data_dir)
    if args.dataset == "camvid":
        return voc.DatasetSpec(
            args.data_dir or voc.CAMVID_DIR,
            "camvid",
            voc.CAMVID_CLASSES,
            voc.CAMVID_VOID,
        )
    if args.data_dir is None or args.num_classes is None:
        raise DatasetError("--dataset folder needs --data-dir and --num-classes.")
    names = tuple(args.class_names or (f"class_{i}" for i in range(args.num_classes)))
    if len(names) != args.num_classes:
        raise DatasetError(
            f"--class-names lists {len(names)} names but --num-classes is "
            f"{args.num_classes}."
        )
    return voc.DatasetSpec(
        args.data_dir, "auto", names, args.ignore_index, args.mask_values
    )


# --------------------------------------------------------------------------
# Running a script
# --------------------------------------------------------------------------


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's `main`: bad input and Ctrl-C print one line, no traceback.

    Exit status: 1 for bad input, 130 for Ctrl-C or SIGTERM (the shell's
    128 + SIGINT); `common.stops` makes sure that a stop always ends here.
    """
    try:
        main()
    except (InputError, WorkerLost) as error:
        raise SystemExit(f"error: {error}") from None
    except TrainingInterrupted as interruption:
        stops.exit_with(str(interruption))
    except BaseException as error:  # Before the run folder: nothing is saved.
        stop = stops.stop_behind(error)
        if stop is None:
            raise
        stops.exit_with(stops.message(stop))


def verify_main(argv: Sequence[str] | None = None) -> None:
    """`python -m common.cli verify|cache`: check a dataset, or write its cache.

    verify: `voc.verify` with the training scripts' flags. cache: the splits
    as a `common.cache` folder (`--out`), which trains without TensorFlow.
    """
    parser = ArgumentParser(
        prog="python -m common.cli",
        description="verify: check every file of a split (readable, sizes "
        "matching, labels in range) and print its class frequencies. cache: "
        "write the splits as a compact cache that trains on any Keras backend "
        "without TensorFlow (docs/gpu.md).",
    )
    parser.add_argument("command", choices=["verify", "cache"], help="what to do")
    parser.add_argument(
        "folder",
        nargs="?",
        help="dataset folder, same as --data-dir (default: the --dataset's)",
    )
    parser.add_argument(
        "--split", default="train", help="verify: split to check (default: %(default)s)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val"],
        help="cache: splits to write (default: %(default)s)",
    )
    parser.add_argument("--out", help="cache: the folder to write")
    add_dataset_args(parser)
    args = parser.parse_args(argv)
    args.data_dir = args.folder or args.data_dir
    if args.command == "cache" and not args.out:
        parser.error("cache needs --out FOLDER")

    def check() -> None:
        dataset = resolve_dataset(args)
        if args.command == "cache":
            cache.write_cache(dataset, args.splits, args.out)
            return
        voc.verify(
            dataset.data_dir,
            args.split,
            dataset.num_classes,
            dataset.class_names,
            dataset.layout,
            dataset.ignore_index,
            dataset.mask_values,
        )

    run_cli(check)


if __name__ == "__main__":
    verify_main()
