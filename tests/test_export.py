"""export.py and common/exported.py: every architecture out to every format and back."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import export
import predict
from common import exported, inference
from common.errors import InputError
from deeplab_train import build_deeplab
from fcn_train import build_fcn
from segnet_train import build_segnet
from unet_train import build_unet

pytest.importorskip("tf2onnx", reason="pip install -r requirements-export.txt")
pytest.importorskip("onnxruntime", reason="pip install -r requirements-export.txt")
pytest.importorskip("ai_edge_litert", reason="pip install -r requirements-export.txt")

NUM_CLASSES = 6  # shapes
TINY_MODELS = {
    "fcn": lambda: build_fcn(NUM_CLASSES, "8s", width=1 / 16),
    "unet": lambda: build_unet(NUM_CLASSES, filters=(4, 8, 16, 32)),
    "segnet": lambda: build_segnet(NUM_CLASSES, variant="basic"),
    "deeplab": lambda: build_deeplab(
        NUM_CLASSES, "v3plus", "resnet50", resnet_blocks=(1, 1, 1, 1), head_filters=16
    ),
}


# --------------------------------------------------------------------------
# Round trips: each architecture in each format, against Keras
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def check_images(shapes_dir) -> list[np.ndarray]:
    """Two shapes validation images (96-160 px, not multiples of 32), cropped."""
    dataset = export.check_dataset("unused.keras", shapes_dir)
    return [image[:45, :61] for image, _ in export.read_examples(dataset, "val", 2, 6)]


@pytest.mark.parametrize("architecture", list(TINY_MODELS))
def test_every_format_agrees_with_keras(architecture, check_images, tmp_path):
    keras.utils.set_random_seed(0)
    model = TINY_MODELS[architecture]()
    reference = [
        inference.to_numpy_labels(inference.predict_probabilities(model, image))
        for image in check_images
    ]
    serving = export.serving_model(model)
    for format in export.FORMATS:
        path = str(tmp_path / export.artefact_name(format, "none"))
        export.export_format(serving, path, format)
        runner = exported.load_exported(path)
        for image, expected in zip(check_images, reference):
            outputs = runner.run(image[None])
            assert outputs["labels"].shape == (1, *image.shape[:2])
            assert outputs["labels"].dtype == np.uint8
            assert outputs["probabilities"].shape == (1, *image.shape[:2], 6)
            agreement = np.mean(outputs["labels"][0] == expected)
            assert agreement >= export.MIN_AGREEMENT, (format, agreement)


# --------------------------------------------------------------------------
# The command line: table, export.json, quantization, predict.py
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_path(tmp_path_factory) -> str:
    keras.utils.set_random_seed(1)
    path = str(tmp_path_factory.mktemp("run") / "best.keras")
    build_unet(NUM_CLASSES, filters=(4, 8, 16, 32)).save(path)
    return path


def run_export(unet_path, shapes_dir, out, *flags) -> dict:
    return export.main(
        ["--model", unet_path, "--out", out, "--data-dir", shapes_dir]
        + ["--check-images", "2", "--calibration-images", "2", *flags]
    )


@pytest.fixture(scope="module")
def saved_model_export(unet_path, shapes_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    return out, run_export(unet_path, shapes_dir, out, "--format", "saved_model")


def test_main_writes_a_checked_export_and_export_json(saved_model_export, unet_path):
    out, results = saved_model_export
    (row,) = results["check"]["exports"]
    assert row["format"] == "saved_model" and row["file"].endswith("saved_model")
    assert row["pixel_agreement"] >= export.MIN_AGREEMENT
    assert row["mean_iou"] == pytest.approx(results["check"]["keras_mean_iou"])
    with open(os.path.join(out, "export.json")) as f:
        written = json.load(f)
    assert written["num_classes"] == NUM_CLASSES
    assert written["class_names"][1] == "circle"  # shapes' classes, from the data
    assert len(written["palette"]) == NUM_CLASSES
    assert written["source_model"] == os.path.abspath(unet_path)
    runner = exported.load_exported(os.path.join(out, "saved_model"))
    assert runner.class_names == written["class_names"]


def test_quantized_tflite_is_smaller_and_close(unet_path, shapes_dir, tmp_path):
    rows = {}
    for quantize in export.QUANTIZATIONS:
        results = run_export(
            unet_path,
            shapes_dir,
            str(tmp_path),
            "--format",
            "tflite",
            "--quantize",
            quantize,
        )
        rows[quantize] = results["check"]["exports"][0]
    assert rows["int8"]["file"].endswith("model_int8.tflite")
    # float16 halves the weights, int8 quarters them (plus the graph itself).
    sizes = [rows[quantize]["size_mb"] for quantize in ("int8", "float16", "none")]
    assert sizes == sorted(sizes) and sizes[0] < 0.6 * sizes[2]
    assert rows["none"]["pixel_agreement"] >= export.MIN_AGREEMENT
    assert all(row["pixel_agreement"] > 0.8 for row in rows.values())


def test_predict_runs_an_exported_model_like_the_keras_one(
    saved_model_export, unet_path, check_images, tmp_path
):
    image_path = str(tmp_path / "photo.png")
    Image.fromarray(check_images[0]).save(image_path)
    saved_model = os.path.join(saved_model_export[0], "saved_model")
    for model_path, out in [(unet_path, "keras"), (saved_model, "exported")]:
        argv = [image_path, "--model", model_path, "--out", str(tmp_path / out)]
        assert predict.main(argv) == 0
    masks = [
        np.array(Image.open(tmp_path / out / "photo_mask.png"))
        for out in ("keras", "exported")
    ]
    assert masks[0].shape == check_images[0].shape[:2]
    assert np.mean(masks[0] == masks[1]) >= export.MIN_AGREEMENT


# --------------------------------------------------------------------------
# Refusals: one line each
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="test_export")
class ArgmaxPooling(keras.layers.Layer):
    """SegNet's pooling as it was: TensorFlow's MaxPoolWithArgmax kernel."""

    def call(self, inputs):
        return tf.nn.max_pool_with_argmax(inputs, 2, 2, "SAME")[0]


def test_an_op_litert_lacks_is_refused_with_its_name(tmp_path):
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(2, 1)(ArgmaxPooling()(inputs))
    model = keras.Model(inputs, keras.layers.UpSampling2D()(outputs), name="old")
    with pytest.raises(export.ExportError, match="old cannot be exported to tflite.*"):
        export.export_format(
            export.serving_model(model), str(tmp_path / "m.tflite"), "tflite"
        )


def test_quantizing_saved_model_or_onnx_is_refused():
    with pytest.raises(SystemExit):
        export.parse_args(
            ["--model", "m.keras", "--format", "onnx", "--quantize", "int8"]
        )


def test_valid_padding_unet_is_refused(tmp_path):
    path = str(tmp_path / "valid.keras")
    build_unet(3, padding="valid", filters=(4, 8, 16, 32)).save(path)
    with pytest.raises(InputError, match="size of its input"):
        export.main(["--model", path, "--format", "onnx"])


def test_missing_export_package_names_the_install_command(monkeypatch):
    real_import = exported.importlib.import_module

    def no_tf2onnx(name):
        if name == "tf2onnx":
            raise ImportError(name)
        return real_import(name)

    monkeypatch.setattr(exported.importlib, "import_module", no_tf2onnx)
    with pytest.raises(exported.MissingPackageError, match="requirements-export.txt"):
        export.main(["--model", "m.keras", "--format", "onnx"])


def test_unknown_model_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="export one with export.py"):
        exported.load_exported(str(path))
