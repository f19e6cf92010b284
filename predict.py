"""Segment your own pictures (or videos) with a trained model.

    python predict.py --model runs/unet-voc-TIME/best.keras photo.jpg holidays/ clip.mp4

For every image it writes `NAME_mask.png`, a VOC palette PNG (opens as a VOC
style label, class index = pixel value), and `NAME_overlay.jpg`, the image
blended with the coloured mask, with a legend of the classes present beside it. A video
becomes `NAME_overlay.mp4`. Images of any size work (padded for the network,
cropped back); greyscale and RGBA inputs are converted; JPEG EXIF orientation
is applied (OpenCV does it on reading). A file that cannot be read is reported
and skipped; the exit code is 1 if any input failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from common import exported, inference, plots, training
from common.voc import IMAGE_EXTENSIONS, VOC_CLASSES

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        default=0.5,
        help="opacity of the mask in the overlay (default: %(default)s)",
    )
    parser.add_argument(
        "--scales", default="1.0", help="test scales, e.g. 0.75,1.0,1.25 (default: 1.0)"
    )
    parser.add_argument(
        "--flip", action="store_true", help="also average mirrored images"
    )
    return parser


def class_names_for(model_path: str, num_classes: int, given: Sequence[str] | None):
    """Names from the flag, else from the training run's results.json, else VOC's."""
    results_path = os.path.join(os.path.dirname(model_path), "results.json")
    if given:
        return list(given)
    if os.path.isfile(results_path):
        with open(results_path) as f:
            names = list(json.load(f).get("per_class_iou", {}))
        if len(names) == num_classes:
            return names
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]


def expand_inputs(inputs: Sequence[str]) -> Iterator[str]:
    """Files as given; folders become their image files, sorted."""
    for path in inputs:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    yield os.path.join(path, name)
        else:
            yield path


def segment(model, rgb: np.ndarray, scales, flip: bool) -> np.ndarray:
    """Class index per pixel, uint8 `(H, W)`, for one RGB uint8 image."""
    # An exported model pads inside its graph (size_divisor 1); Keras ones to 32.
    size_divisor = getattr(model, "size_divisor", 32)
    probabilities = inference.predict_multiscale(
        model, rgb.astype(np.float32), scales, flip, size_divisor
    )
    return inference.to_numpy_labels(probabilities)


LEGEND_WIDTH = 140  # pixels of the legend panel beside the image


def overlay(rgb: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float):
    """The image blended with the coloured mask, and beside it a legend panel.

    The legend lists the classes present and sits to the right of the image,
    so it never hides a small image; the panel keeps the image's height, so
    every frame of a video has the same size.
    """
    blended = cv2.addWeighted(rgb, 1 - alpha, plots.colorize(labels), alpha, 0)
    panel = np.zeros((rgb.shape[0], LEGEND_WIDTH, 3), np.uint8)
    for row, index in enumerate(np.unique(labels)):
        top = 6 + 18 * row
        color = tuple(int(c) for c in plots.COLORMAP[index])
        cv2.rectangle(panel, (6, top), (20, top + 14), color, thickness=-1)
        cv2.rectangle(panel, (6, top), (20, top + 14), (255, 255, 255), thickness=1)
        name = names[index] if index < len(names) else str(index)
        cv2.putText(
            panel,
            name,
            (26, top + 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([blended, panel], axis=1)


def save_palette_png(labels: np.ndarray, path: str) -> None:
    """Write class indices as a VOC palette PNG (OpenCV cannot write palettes)."""
    image = Image.fromarray(labels, mode="P")
    image.putpalette(plots.COLORMAP.ravel().tolist())
    image.save(path)


def predict_image(model, path: str, out_dir: str, names, args, scales) -> None:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # grey/RGBA -> BGR, EXIF applied
    if bgr is None:
        raise OSError(f"cannot read {path!r} as an image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    labels = segment(model, rgb, scales, args.flip)
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    save_palette_png(labels, f"{stem}_mask.png")
    blended = overlay(rgb, labels, names, args.alpha)
    cv2.imwrite(f"{stem}_overlay.jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))


def predict_video(model, path: str, out_dir: str, names, args, scales) -> None:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise OSError(f"cannot open {path!r} as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    writer = None
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            blended = overlay(
                rgb, segment(model, rgb, scales, args.flip), names, args.alpha
            )
            if writer is None:
                size = (blended.shape[1], blended.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(f"{stem}_overlay.mp4", fourcc, fps, size)
            writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise OSError(f"{path!r} has no frames that OpenCV can decode")


def main(argv: Sequence[str] | None = None) -> int:
    """Predict every input; return the number of inputs that failed."""
    args = make_parser().parse_args(argv)
    scales = inference.parse_scales(args.scales)
    if args.model.endswith(".keras"):
        model = inference.load_model(args.model)
    else:  # A SavedModel folder, .tflite or .onnx written by export.py.
        model = exported.load_exported(args.model)
    given_names = args.class_names or getattr(model, "class_names", None)
    names = class_names_for(args.model, model.output_shape[-1], given_names)
    os.makedirs(args.out, exist_ok=True)
    failures = 0
    for path in expand_inputs(args.inputs):
        is_video = path.lower().endswith(VIDEO_EXTENSIONS)
        try:
            (predict_video if is_video else predict_image)(
                model, path, args.out, names, args, scales
            )
            print(f"{path} -> {args.out}")
        except OSError as error:
            print(f"skipped: {error}", file=sys.stderr)
            failures += 1
    return failures


if __name__ == "__main__":
    training.run_cli(lambda: sys.exit(1 if main() else 0))
