"""Segment your own pictures (or videos) with a trained model.

    python predict.py --model runs/unet-voc-TIME/best.keras photo.jpg holidays/ clip.mp4

For every image it writes `NAME_mask.png`, a VOC palette PNG (opens as a VOC
style label, class index = pixel value), and `NAME_overlay.jpg`: the image tinted
with the coloured mask, each region edged with a band of its class colour and a
white line, and a legend of the classes present below it (images under 256 px
are scaled up, nearest neighbour, so that small ones stay readable). A video
becomes `NAME_overlay.mp4`.
It names every file it writes (or, for many inputs, the folder and the count).
Images of any size work (padded for the network, cropped back); greyscale and
RGBA inputs are converted; JPEG EXIF orientation is applied (OpenCV does it on
reading). A model trained on images that are not 8-bit RGB (greyscale,
16-bit, RGBA, multi-band TIFF) reads each input as its training images were
read, with their bands (`results.json` says which), pads it with their band
means, and overlays the mask on the first band (grey) or the first three.
A file that cannot be read is reported and skipped; the exit code is
1 if any input failed. Class names come from the `results.json` beside the
model. `--crf` refines each prediction with DeepLab's dense CRF
(`common/crf.py`; `pip install -r requirements-crf.txt`).

Large images (3000-10000 px: aerial, pathology, phone photos) need not go
through the network whole:

    python predict.py --model best.keras --tile 512 big.tif
    python predict.py --model best.keras --tile crop photo.jpg   # the run's --crop-size

`--tile SIZE` predicts overlapping SIZE x SIZE windows (neighbours share
`--tile-overlap`, default a quarter of a window) and blends their softmax,
each window's weights falling towards its edges (`--tile-blend gaussian` as
nnU-Net, or `linear`); see `common/inference.py`. The network then needs memory
for `--tile-batch-size` windows only, and the blending one window-tall band of
the image, whose rows become labels as they complete. A .keras model takes
multiples of 32; a model trained on 512 crops sees the scale it learnt. It
works with exported models too, and with `--scales`/`--flip`/`--crf`, which
then hold the whole image's softmax.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
import cv2
import numpy as np
from PIL import Image

from common import cli, crf, exported, inference, plots, results, voc
from common.backend import tf
from common.constants import IMAGE_MEAN
from common.errors import InputError
from common.metrics import label_boundaries
from common.voc import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
# Up to this many inputs, every written file is named; beyond, one summary line.
MAX_LISTED = 10


def make_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or videos")
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file saved by training, or what export.py wrote: a "
        "SavedModel folder, .tflite or .onnx",
    )
    parser.add_argument(
        "--out", default="predictions", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="class names for the legend (default: from results.json beside the "
        "model, else VOC's when there are 21 classes)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.4,
        help="opacity of the class tint in the overlay; each region also gets a "
        "solid band of its class colour along its border, which carries the match "
        "to the legend, so a light tint keeps the image readable "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--scales",
        help="test scales, e.g. 0.75,1.0,1.25 (default: the training run's "
        "--image-scale from results.json, else 1.0)",
    )
    parser.add_argument(
        "--flip", action="store_true", help="also average mirrored images"
    )
    crf.add_crf_args(parser)
    cli.add_tile_args(parser)
    return parser


def class_names_for(model_path: str, num_classes: int, given: Sequence[str] | None):
    """Names from the flag, else from the training run's results.json, else VOC's."""
    if given:
        return list(given)
    return results.run_class_names(model_path, num_classes)


def run_image_format(model, run: dict | None) -> voc.ImageFormat:
    """How the model's training images were stored (its run's results.json).

    Without a run, a model of three input bands takes RGB; one of other bands
    needs the band means its run recorded to pad with, so it is refused.
    """
    image_format = results.run_image_format(run)
    bands = model_bands(model)
    if bands not in (None, image_format.bands):
        found = f"says {image_format.storage()}" if run else "is not beside it"
        raise InputError(
            f"--model {model.name} takes images of {bands} bands, but the "
            f"results.json of its training run {found}: keep the results.json "
            "that training wrote beside the model."
        )
    return image_format


def model_bands(model) -> int | None:
    """The input bands of a Keras or exported model (None if it does not say)."""
    if hasattr(model, "input_shape"):
        return model.input_shape[-1]
    return model.bands


def expand_inputs(inputs: Sequence[str]) -> Iterator[str]:
    """Files as given; folders become their image files, sorted."""
    for path in inputs:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    yield os.path.join(path, name)
        else:
            yield path


def segment(
    model,
    rgb: np.ndarray,
    scales,
    flip: bool,
    crf_settings=None,
    tile_settings=None,
    pad_value: Sequence[float] = IMAGE_MEAN,
):
    """Class index per pixel, uint8 `(H, W)`, for one RGB uint8 image.

    Images that are not RGB: float32 `(H, W, bands)`, padded with `pad_value`
    (their band means); the CRF sees them as `voc.display_rgb` shows them.
    """
    # An exported model pads inside its graph (size_divisor 1); Keras ones to 32.
    size_divisor = getattr(model, "size_divisor", 32)
    if tile_settings is not None and scales == (1.0,) and not flip and not crf_settings:
        # Labels band by band: the whole image's softmax is never held.
        return inference.predict_tiled_labels(
            model, rgb, size_divisor=size_divisor, pad_value=pad_value, **tile_settings
        )
    probabilities = inference.predict_multiscale(
        model,
        rgb.astype(np.float32),
        scales,
        flip,
        size_divisor,
        tile_settings,
        pad_value,
    )
    if crf_settings is not None:
        probabilities = crf.dense_crf(
            voc.display_rgb(rgb), probabilities.numpy(), **crf_settings
        )
    return inference.to_numpy_labels(probabilities)


# Overlays of smaller images are scaled up to this short side, so that regions,
# outlines and legend text are legible (a 64 px image would be a thumbnail).
MIN_OVERLAY_SIDE = 256
LEGEND_FONT = cv2.FONT_HERSHEY_SIMPLEX


def overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    alpha: float,
    legend_indices: np.ndarray | None = None,
) -> np.ndarray:
    """The image, tinted and outlined by class, above a legend no wider than it.

    rgb: uint8 `(H, W, 3)`; labels: class indices `(H, W)`. An image whose
    short side is under `MIN_OVERLAY_SIDE` is first scaled up by a whole
    factor (`upscaled`). Returns uint8 `(H', W', 3)` with `W'` the (scaled)
    image's width and the legend, which lists `legend_indices` (default: the
    classes present), in the rows below the image.
    """
    rgb, labels = upscaled(rgb, labels, MIN_OVERLAY_SIDE)
    blended = tint_and_outline(rgb, labels, alpha)
    if legend_indices is None:
        legend_indices = np.unique(labels)
    panel = legend_panel(legend_indices, names, blended.shape[1])
    return np.concatenate([blended, panel], axis=0)


def upscaled(
    rgb: np.ndarray, labels: np.ndarray, min_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` and `labels` repeated by the smallest whole factor giving `min_side`.

    Both by nearest neighbour: each pixel becomes a block, so an outline still
    falls on the very pixels the model labelled, and labels stay labels.
    """
    factor = -(-min_side // min(labels.shape))  # ceil(min_side / short side)
    if factor <= 1:
        return rgb, labels
    return (
        rgb.repeat(factor, axis=0).repeat(factor, axis=1),
        labels.repeat(factor, axis=0).repeat(factor, axis=1),
    )


def tint_and_outline(rgb: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """Class regions blended at `alpha`, edged with a solid band of their own colour.

    A blend mixes the class colour with the photo under it, so on saturated
    objects its tint no longer matches the legend; the band just inside each
    region's border is the palette colour itself, and a 1-pixel white line on
    the border separates neighbouring regions on dark and light photos alike.
    Class 0 (VOC's background, black in the palette) stays untinted: it would
    only darken the picture.
    """
    colors = plots.colorize(labels)
    tinted = cv2.addWeighted(rgb, 1 - alpha, colors, alpha, 0)
    blended = np.where((labels == 0)[..., None], rgb, tinted)
    border = label_boundaries(labels)
    width = 2 * max(1, round(min(labels.shape) / 100)) + 1  # 3 px a side at 256.
    near_border = cv2.dilate(border.astype(np.uint8), np.ones((width, width)))
    band = near_border.astype(bool) & (labels != 0)
    blended[band] = colors[band]
    blended[border] = 255
    return blended


def legend_panel(indices: np.ndarray, names: Sequence[str], width: int) -> np.ndarray:
    """A black panel, `width` wide, with each class's colour swatch and name.

    Entries fill as many columns as fit in `width` (the image's), then wrap
    to more rows; a name longer than the whole width is cut short with "..".
    Text grows with wide images so that it stays legible. Returns uint8
    `(rows, width, 3)`, the same for the same `indices` and `width` (video
    frames keep one size).
    """
    scale = max(0.45, width / 1200)
    row = int(round(36 * scale))
    swatch, gap = int(row * 0.7), row // 3
    room = width - 2 * gap - swatch - row // 4  # For the text of a lone column.
    labels = [
        fitted_text(names[i] if i < len(names) else str(i), scale, room)
        for i in indices
    ]
    cell = max((text_width(text, scale) for text in labels), default=0)
    cell += swatch + row // 4 + 2 * gap
    columns = max(1, min(len(labels), (width - gap) // cell))
    panel = np.zeros((row * -(-len(labels) // columns) + row // 2, width, 3), np.uint8)
    for number, (index, text) in enumerate(zip(indices, labels)):
        line, column = divmod(number, columns)
        left, top = gap + cell * column, gap + row * line
        corner = (left, top), (left + swatch, top + swatch)
        color = tuple(int(c) for c in plots.COLORMAP[index])
        cv2.rectangle(panel, *corner, color, thickness=-1)
        cv2.rectangle(panel, *corner, (255, 255, 255), thickness=1)
        baseline = (left + swatch + row // 4, top + swatch - 1)
        cv2.putText(
            panel, text, baseline, LEGEND_FONT, scale, (255, 255, 255), 1, cv2.LINE_AA
        )
    return panel


def text_width(text: str, scale: float) -> int:
    """Pixels `text` takes in the legend's font at `scale`."""
    return cv2.getTextSize(text, LEGEND_FONT, scale, 1)[0][0]


def fitted_text(text: str, scale: float, room: int) -> str:
    """`text`, cut short with ".." where it would be wider than `room` pixels."""
    if text_width(text, scale) <= room:
        return text
    while len(text) > 1 and text_width(text + "..", scale) > room:
        text = text[:-1]
    return text + ".."


def save_palette_png(labels: np.ndarray, path: str) -> None:
    """Write class indices as a VOC palette PNG (OpenCV cannot write palettes)."""
    image = Image.fromarray(labels, mode="P")
    image.putpalette(plots.COLORMAP.ravel().tolist())
    image.save(path)


def read_image(path: str, image_format: voc.ImageFormat) -> np.ndarray:
    """One input: uint8 RGB `(H, W, 3)`, or as the model's training images were read.

    For RGB, OpenCV converts grey and RGBA to RGB and applies the EXIF
    orientation. Other formats (`voc.load_image`): float32 `(H, W, bands)`
    with the stored values, and an image with other bands or bit depth is
    an `OSError` naming it.
    """
    if image_format.is_rgb:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # grey/RGBA -> BGR, EXIF applied
        if bgr is None:
            raise OSError(f"cannot read {path!r} as an image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    stored = replace(image_format, tiff=path.lower().endswith(voc.TIFF_EXTENSIONS))
    try:
        voc.checked_image_size(path, stored)
        return voc.load_image(path, stored).numpy()
    except (ValueError, tf.errors.OpError) as error:
        raise OSError(f"{path!r} does not fit this model: {error}") from None


def predict_image(model, path: str, out_dir: str, names, args, options) -> list[str]:
    """Write NAME_mask.png and NAME_overlay.jpg for one image; return their paths."""
    image = read_image(path, args.image_format)
    labels = segment(model, image, **options)
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    save_palette_png(labels, f"{stem}_mask.png")
    blended = overlay(voc.display_rgb(image), labels, names, args.alpha)
    cv2.imwrite(f"{stem}_overlay.jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    return [f"{stem}_mask.png", f"{stem}_overlay.jpg"]


def predict_video(model, path: str, out_dir: str, names, args, options) -> list[str]:
    """Write NAME_overlay.mp4, every frame segmented; return its path.

    The legend lists every class, so that all frames have the same size.
    """
    if not args.image_format.is_rgb:
        raise OSError(
            f"{path!r}: video frames are RGB, but this model takes "
            f"{args.image_format.storage()}"
        )
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise OSError(f"cannot open {path!r} as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    output = os.path.join(
        out_dir, os.path.splitext(os.path.basename(path))[0] + "_overlay.mp4"
    )
    every_class = np.arange(len(names))
    writer = None
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            labels = segment(model, rgb, **options)
            blended = overlay(rgb, labels, names, args.alpha, every_class)
            if writer is None:
                size = (blended.shape[1], blended.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(output, fourcc, fps, size)
            writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise OSError(f"{path!r} has no frames that OpenCV can decode")
    return [output]


def main(argv: Sequence[str] | None = None) -> int:
    """Predict every input; return the number of inputs that failed."""
    args = make_parser().parse_args(argv)
    options = {
        "scales": inference.parse_scales(args.scales) if args.scales else None,
        "flip": args.flip,
        "crf_settings": crf.crf_settings(args) if args.crf else None,
    }
    if args.crf:
        crf.require_pydensecrf()
    # Every path first: a mistyped one should not wait for a model to load.
    cli.check_path(
        args.model,
        "--model",
        "any",
        "a best.keras from training, or a SavedModel folder, .tflite or .onnx "
        "from export.py",
    )
    for path in args.inputs:
        cli.check_path(path, "input", "any", "an image, a video or a folder of them")
    if args.model.endswith(".keras"):
        model = inference.load_model(args.model)
    else:  # A SavedModel folder, .tflite or .onnx written by export.py.
        model = exported.load_exported(args.model)
    # An export's results.json is its source run's (export.json names the model).
    run_model = getattr(model, "metadata", {}).get("source_model", args.model)
    run = results.read_run(run_model)[0]
    options["scales"] = inference.scales_for_run(options["scales"], run)
    options["tile_settings"] = inference.tile_settings(
        args, getattr(model, "size_divisor", 32), run
    )
    args.image_format = run_image_format(model, run)
    options["pad_value"] = args.image_format.pad_value
    given_names = args.class_names or getattr(model, "class_names", None)
    names = class_names_for(args.model, model.output_shape[-1], given_names)
    os.makedirs(args.out, exist_ok=True)
    paths = list(expand_inputs(args.inputs))
    failures, written = 0, 0
    for path in paths:
        is_video = path.lower().endswith(VIDEO_EXTENSIONS)
        try:
            outputs = (predict_video if is_video else predict_image)(
                model, path, args.out, names, args, options
            )
        except OSError as error:
            print(f"skipped: {error}", file=sys.stderr)
            failures += 1
            continue
        written += len(outputs)
        if len(paths) <= MAX_LISTED:
            print(f"{path} -> {', '.join(outputs)}")
    if len(paths) > MAX_LISTED:
        print(
            f"Wrote {written} files for {len(paths) - failures} inputs to {args.out} "
            "(NAME_mask.png and NAME_overlay.jpg per image, NAME_overlay.mp4 per video)"
        )
    return failures


if __name__ == "__main__":
    cli.run_cli(lambda: sys.exit(1 if main() else 0))
