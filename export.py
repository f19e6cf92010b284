"""Export a trained model for TensorFlow Serving, LiteRT (TFLite) or ONNX, and check it.

    pip install -r requirements-export.txt
    python export.py --model runs/unet-voc-TIME/best.keras --format saved_model
    python export.py --model runs/unet-voc-TIME/best.keras --format onnx tflite
    python export.py --model runs/unet-voc-TIME/best.keras --format tflite \
        --quantize int8

Every export has one signature: a uint8 RGB batch `images` `(B, H, W, 3)` of
any height and width in (what a camera or an image decoder gives), `labels`
`(B, H, W)` uint8 class indices and `probabilities` `(B, H, W, C)` float32 out
(`--no-probabilities` drops the latter: smaller outputs on a phone). Inside,
the image is padded at the bottom/right with the dataset mean to a multiple of
32, run through the Keras model and cropped back: exactly what `evaluate.py`
and `predict.py` do around the Keras model (`common/inference.py`). A model
trained on images that are not 8-bit RGB (its `results.json` says) takes
their bands instead, `(B, H, W, bands)`, as uint8 for 8-bit images and as
float32 with the stored values otherwise (16-bit, float TIFF), and pads with
their band means; the model standardises them itself.

The files come from Keras' own exporters (`model.export`): a SavedModel, the
LiteRT converter (built-in ops only, so the file runs on phones without the
TensorFlow kernels; `--quantize float16` halves the weights, `int8` quantizes
weights and activations, calibrated on training images) and tf2onnx for ONNX.

Each export is checked in the same run against the Keras model on the
validation images of the model's own training data (from `results.json` beside
it; else VOC in data/VOCdevkit/VOC2012; else the generated `shapes`): the
share of pixels whose class agrees (at least 99.9% for float32 exports, or the
run fails) and the mean IoU against the ground truth of both, printed as a
table with the file size. `export.json` beside the files records the classes,
palette, input rules, the checks and the source run. `predict.py --model`
runs the exported files too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Sequence

from common import console  # noqa: F401  (first: TensorFlow loads quietly)

# isort: split
import keras
import numpy as np

from common import cli, exported, inference, results, shapes, voc
from common.backend import tf
from common.constants import IGNORE_LABEL
from common.errors import DatasetError, InputError
from common.layers import pad_to_multiple
from common.metrics import ConfusionMatrix, mean_iou
from common.plots import COLORMAP

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "int8")
KERAS_FORMATS = {"saved_model": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}
# The package each exporter needs beyond TensorFlow (SavedModel needs none).
EXPORT_PACKAGES = {"tflite": "ai_edge_litert", "onnx": "tf2onnx"}
SIZE_DIVISOR = 32  # As common.inference: padding to it suits every model here.
MIN_AGREEMENT = 0.999  # For float32 exports; quantized ones report the IoU change.


class ExportError(InputError):
    """A model that a format cannot express, or an export that does not agree."""


# --------------------------------------------------------------------------
# The exported signature
# --------------------------------------------------------------------------


def signature_dtype(image_format: voc.ImageFormat) -> str:
    """The exported input's dtype: uint8 for 8-bit images, else float32.

    float32 carries 16-bit and float values exactly, and every runtime takes it.
    """
    return "uint8" if image_format.dtype == "uint8" else "float32"


class ServingModel(keras.Model):
    """uint8 images of any size -> class indices (and probabilities).

    Wraps a trained model with what `common.inference.predict_probabilities`
    does around it: pad at the bottom/right with the dataset mean
    (`pad_value`, one value per band) to a multiple of `size_divisor`, run,
    crop the padding off, softmax. Only the wrapped model has weights.
    """

    def __init__(
        self,
        model: keras.Model,
        probabilities: bool = True,
        size_divisor: int = SIZE_DIVISOR,
        pad_value: Sequence[float] = voc.RGB.pad_value,
        **kwargs,
    ):
        super().__init__(name=f"{model.name}_serving", **kwargs)
        self.model = model
        self.probabilities = probabilities
        self.size_divisor = size_divisor
        self.pad_value = tuple(pad_value)

    def call(self, images):
        images = tf.cast(images, tf.float32)  # (b, h, w, bands), RGB in [0, 255]
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        # Padded with the mean pixel, as validation in training pads.
        mean = tf.constant(self.pad_value, tf.float32)
        padded = pad_to_multiple(images - mean, self.size_divisor) + mean
        logits = self.model(padded, training=False)[:, :height, :width]
        logits = tf.cast(logits, tf.float32)  # (b, h, w, classes)
        outputs = {"labels": tf.cast(tf.argmax(logits, axis=-1), tf.uint8)}
        if self.probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits)
        return outputs


def serving_model(
    model: keras.Model,
    probabilities: bool = True,
    image_format: voc.ImageFormat = voc.RGB,
) -> ServingModel:
    """A built `ServingModel` (Keras exports only built models) for images
    stored as `image_format` (the model's training run's)."""
    if model.output_shape[-1] > 256:
        raise ExportError("labels are uint8: at most 256 classes can be exported.")
    serving = ServingModel(model, probabilities, pad_value=image_format.pad_value)
    shape = (1, SIZE_DIVISOR, SIZE_DIVISOR, image_format.bands)
    serving(np.zeros(shape, signature_dtype(image_format)))
    return serving


# --------------------------------------------------------------------------
# Writing each format
# --------------------------------------------------------------------------


def artefact_name(format: str, quantize: str) -> str:
    """saved_model/, model.onnx, model.tflite, model_float16.tflite, ..."""
    if format == "saved_model":
        return "saved_model"
    suffix = "" if quantize == "none" else f"_{quantize}"
    return f"model{suffix}.{format}"


def litert_settings(quantize: str, calibration: Sequence[np.ndarray]) -> dict:
    """LiteRT converter attributes for `model.export(format="litert", ...)`.

    Built-in ops only: a model that needs TensorFlow kernels ("Select TF ops")
    fails here rather than on the phone. `float16` stores weights as float16
    (half the file, computed in float32 on CPUs); `int8` quantizes weights and
    activations with ranges measured on `calibration` images (LiteRT's "full
    integer quantization"), keeping float kernels only where no int8 one exists.
    """
    settings = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize == "float16":
        settings["optimizations"] = [tf.lite.Optimize.DEFAULT]
        settings["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "int8":
        settings["optimizations"] = [tf.lite.Optimize.DEFAULT]
        settings["representative_dataset"] = lambda: (
            [image[None]] for image in calibration
        )
    return settings


def export_format(
    serving: ServingModel,
    path: str,
    format: str,
    quantize: str = "none",
    calibration: Sequence[np.ndarray] = (),
    image_format: voc.ImageFormat = voc.RGB,
) -> None:
    """Write `serving` to `path` in `format` with Keras' exporter for it."""
    if format in EXPORT_PACKAGES:
        exported.require(EXPORT_PACKAGES[format], f"--format {format}")
    signature = [
        tf.TensorSpec(
            (None, None, None, image_format.bands),
            signature_dtype(image_format),
            name="images",
        )
    ]
    settings = litert_settings(quantize, calibration) if format == "tflite" else {}
    try:
        with warnings.catch_warnings():
            # Keras' tf2onnx shim probes `np.object`, which NumPy 2 warns about.
            warnings.filterwarnings("ignore", "In the future `np.object`")
            serving.export(
                path,
                format=KERAS_FORMATS[format],
                input_signature=signature,
                verbose=False,
                **settings,
            )
    except Exception as error:  # The converters raise many types; name the op.
        raise ExportError(
            f"{serving.model.name} cannot be exported to {format}: {first_line(error)}"
        ) from None


def first_line(error: Exception) -> str:
    """The converter's own one-line reason (its messages run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("TF Select ops:", "not supported"):
        for line in lines:
            if marker in line:
                return line
    return lines[0][:300] if lines else type(error).__name__


def file_size_mb(path: str) -> float:
    if os.path.isdir(path):
        return (
            sum(
                os.path.getsize(os.path.join(folder, name))
                for folder, _, names in os.walk(path)
                for name in names
            )
            / 2**20
        )
    return os.path.getsize(path) / 2**20


# --------------------------------------------------------------------------
# Checking against Keras on real images
# --------------------------------------------------------------------------


def check_dataset(model_path: str, data_dir: str | None) -> voc.DatasetSpec:
    """The images to check on: `--data-dir`, the run's data, VOC, else `shapes`.

    They are read as the run's images were (`results.run_image_format`).
    """
    run_results = results.read_run(model_path)[0]
    image_format = results.run_image_format(run_results)
    if data_dir:
        names = shapes.SHAPES_CLASSES if shapes.is_shapes_dir(data_dir) else ()
        return voc.DatasetSpec(data_dir, "auto", names, image_format=image_format)
    run = (run_results or {}).get("dataset")
    if run and os.path.isdir(run["data_dir"]):
        return voc.DatasetSpec(
            run["data_dir"],
            run["layout"],
            tuple(run["class_names"]),
            run["ignore_index"],
            image_format=image_format,
        )
    if os.path.isdir(voc.VOC_DIR):
        return voc.DatasetSpec(voc.VOC_DIR, "voc", voc.VOC_CLASSES)
    return voc.DatasetSpec(shapes.generate_shapes(), "voc", shapes.SHAPES_CLASSES)


def read_examples(
    dataset: voc.DatasetSpec, split: str, count: int, num_classes: int
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The first `count` (image, mask) pairs of `split`; mask None if it cannot
    be scored with this model's classes."""
    pairs = voc.list_pairs(dataset.data_dir, split, dataset.layout)[:count]
    if not pairs:
        raise DatasetError(f"{dataset.data_dir} has no {split!r} images to check.")
    scored = not dataset.class_names or dataset.num_classes == num_classes
    examples = []
    for image_path, mask_path in pairs:
        # 255 classes: accept every index here, judge the range below.
        image, mask = voc.load_pair(
            image_path,
            mask_path,
            255,
            dataset.ignore_index,
            image_format=dataset.image_format,
        )
        mask = mask.numpy()
        valid = scored and np.all((mask < num_classes) | (mask == IGNORE_LABEL))
        examples.append((image.numpy(), mask if valid else None))
    return examples


def keras_labels(
    model: keras.Model, examples, image_format: voc.ImageFormat = voc.RGB
) -> list[np.ndarray]:
    """The reference: the Keras model as evaluate.py and predict.py run it."""
    pad_value = image_format.pad_value
    return [
        inference.to_numpy_labels(
            inference.predict_probabilities(model, image, pad_value=pad_value)
        )
        for image, _ in examples
    ]


def mean_iou_of(labels: Sequence[np.ndarray], examples, num_classes: int):
    """Mean IoU of `labels` against the masks, or None without usable masks."""
    if any(mask is None for _, mask in examples):
        return None
    metric = ConfusionMatrix(num_classes)
    for predicted, (_, mask) in zip(labels, examples):
        metric.update_state(mask[None], tf.one_hot(predicted[None], num_classes))
    return float(mean_iou(metric.matrix))


def check_export(
    runner: exported.ExportedModel, examples, reference, num_classes: int
) -> dict:
    """Pixel agreement with `reference` labels and mean IoU, one image at a time."""
    labels, seconds = [], []
    for image, _ in examples:
        start = time.perf_counter()
        labels.append(runner.run(image[None])["labels"][0])
        seconds.append(time.perf_counter() - start)
    same = sum(int(np.sum(a == b)) for a, b in zip(labels, reference))
    total = sum(label.size for label in reference)
    return {
        "pixel_agreement": same / total,
        "mean_iou": mean_iou_of(labels, examples, num_classes),
        "median_ms_per_image": 1000 * float(np.median(seconds)),
    }


def print_table(rows: Sequence[dict], keras_iou: float | None) -> None:
    """One line per export; mean IoU change is exported minus Keras."""
    print(
        f"{'format':<12} {'quantize':<8} {'size MB':>8} {'agree %':>8} "
        f"{'mIoU':>7} {'change':>7}  file"
    )
    keras_text = "n/a" if keras_iou is None else f"{keras_iou:.4f}"
    print(f"{'keras':<12} {'none':<8} {'':>8} {'100.00':>8} {keras_text:>7}")
    for row in rows:
        iou = row["mean_iou"]
        iou_text = "n/a" if iou is None else f"{iou:.4f}"
        change = (
            "n/a" if iou is None or keras_iou is None else f"{iou - keras_iou:+.4f}"
        )
        print(
            f"{row['format']:<12} {row['quantize']:<8} {row['size_mb']:>8.2f} "
            f"{100 * row['pixel_agreement']:>8.2f} {iou_text:>7} {change:>7}  "
            f"{row['file']}"
        )


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="a .keras file saved by training"
    )
    parser.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        required=True,
        help="saved_model (TensorFlow Serving), tflite (LiteRT), onnx; several "
        "are written in one run",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="tflite only: float16 weights, or int8 weights and activations "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out", help="output folder (default: export/ beside the model)"
    )
    parser.add_argument(
        "--no-probabilities",
        dest="probabilities",
        action="store_false",
        help="export class indices only (predict.py then cannot use --scales/--flip)",
    )
    parser.add_argument(
        "--data-dir",
        help="images and masks to check on, in any layout the training scripts "
        "read (default: the run's dataset from results.json beside the model, "
        "else data/VOCdevkit/VOC2012, else the generated shapes)",
    )
    parser.add_argument(
        "--check-images",
        type=int,
        default=12,
        help="validation images to compare against Keras (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=32,
        help="training images that calibrate --quantize int8 (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quantize != "none" and args.format != ["tflite"]:
        parser.error("--quantize float16/int8 applies to --format tflite only")
    if args.check_images < 1 or args.calibration_images < 1:
        parser.error("--check-images and --calibration-images must be at least 1")
    return args


def load_checked_model(path: str) -> keras.Model:
    """The Keras model, refused early if its output is not the input's size."""
    cli.check_path(path, "--model", "file", "a .keras file written by training")
    if not path.endswith(".keras"):
        raise InputError(f"--model {path}: expected a .keras file from training.")
    model = inference.load_model(path)
    # Valid-padding U-Nets need overlap-tile inference, not one padded pass.
    inference.check_same_size_output(model, SIZE_DIVISOR)
    return model


def metadata(args, model, dataset, rows, keras_iou) -> dict:
    """What an app needs besides the file: classes, colours, input rules."""
    num_classes = model.output_shape[-1]
    image_format = dataset.image_format
    return {
        "source_model": os.path.abspath(args.model),
        "model_name": model.name,
        "num_classes": num_classes,
        "class_names": results.run_class_names(
            args.model, num_classes, dataset.class_names
        ),
        "palette": COLORMAP[:num_classes].tolist(),
        "input": {
            "name": "images",
            "dtype": signature_dtype(image_format),
            "shape": ["batch", "height", "width", image_format.bands],
            "color_order": "RGB" if image_format.is_rgb else "as stored",
            "stored_as": image_format.storage(),
            "sizes": "any height and width; padded inside to a multiple of "
            f"{SIZE_DIVISOR} with the mean pixel {list(image_format.pad_value)} "
            "and cropped back",
        },
        "outputs": {
            "labels": "uint8 (batch, height, width): class index per pixel",
            **(
                {"probabilities": "float32 (batch, height, width, classes): softmax"}
                if args.probabilities
                else {}
            ),
        },
        "check": {
            "data_dir": dataset.data_dir,
            "images": args.check_images,
            "keras_mean_iou": keras_iou,
            "exports": rows,
        },
    }


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    for format in args.format:  # Fail on a missing package before the work.
        exported.require(
            EXPORT_PACKAGES.get(format, "tensorflow"), f"--format {format}"
        )
        exported.require(
            exported.RUNTIME_PACKAGES.get(format, "tensorflow"),
            f"Checking --format {format}",
        )
    model = load_checked_model(args.model)
    num_classes = model.output_shape[-1]
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(args.model)), "export"
    )
    os.makedirs(out, exist_ok=True)

    dataset = check_dataset(args.model, args.data_dir)
    image_format = dataset.image_format
    if model.input_shape[-1] != image_format.bands:
        raise ExportError(
            f"{model.name} takes {model.input_shape[-1]} bands but its run's "
            f"results.json says {image_format.storage()}: keep the results.json "
            "that training wrote beside the model."
        )
    examples = read_examples(dataset, "val", args.check_images, num_classes)
    calibration = []
    if args.quantize == "int8":
        calibration = [
            image.astype(signature_dtype(image_format))
            for image, _ in read_examples(
                dataset, "train", args.calibration_images, num_classes
            )
        ]
    reference = keras_labels(model, examples, image_format)
    keras_iou = mean_iou_of(reference, examples, num_classes)

    serving = serving_model(model, args.probabilities, image_format)
    rows = []
    for format in args.format:
        path = os.path.join(out, artefact_name(format, args.quantize))
        export_format(serving, path, format, args.quantize, calibration, image_format)
        runner = exported.RUNNERS[format](path)
        row = check_export(runner, examples, reference, num_classes)
        rows.append(
            {
                "format": format,
                "quantize": args.quantize,
                "file": path,
                "size_mb": file_size_mb(path),
                **row,
            }
        )
    print_table(rows, keras_iou)
    export_info = metadata(args, model, dataset, rows, keras_iou)
    with open(os.path.join(out, exported.METADATA_FILE), "w") as f:
        json.dump(export_info, f, indent=2)
    print(f"wrote {', '.join(row['file'] for row in rows)} and export.json")
    for row in rows:
        if row["quantize"] == "none" and row["pixel_agreement"] < MIN_AGREEMENT:
            raise ExportError(
                f"{row['file']} agrees with Keras on only "
                f"{100 * row['pixel_agreement']:.2f}% of pixels "
                f"(at least {100 * MIN_AGREEMENT:.1f}% expected): do not ship it."
            )
    return export_info


if __name__ == "__main__":
    cli.run_cli(main)
