"""Running a model written by `export.py`: SavedModel folder, `.tflite` or `.onnx`.

Every export has one signature: a uint8 RGB batch `images` `(B, H, W, 3)` of
any height and width in, `labels` `(B, H, W)` uint8 class indices and (unless
exported with `--no-probabilities`) `probabilities` `(B, H, W, C)` float32
out. The padding to a multiple of 32 with the dataset mean, which
`common.inference` does around a Keras model, happens inside the graph, so an
app only decodes its image and calls the model. `export.json` beside the file
records the classes, palette, input rules and the source run. A model
trained on other images takes their bands, `(B, H, W, bands)`: uint8 for
8-bit images, float32 with the stored values otherwise (`input` in
export.json says which).

`load_exported(path)` returns an `ExportedModel` that `predict.py` uses in
place of a Keras model: calling it on float images in [0, 255] returns
log-probabilities, whose softmax is the exported probabilities, so
`common.inference.predict_multiscale` (scales, flips) works unchanged.
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

from common import console
from common.backend import tf
from common.errors import InputError

INSTALL_HINT = "pip install -r requirements-export.txt"
METADATA_FILE = "export.json"
# The Python package each format needs to run (`tf` runs SavedModels).
RUNTIME_PACKAGES = {"tflite": "ai_edge_litert", "onnx": "onnxruntime"}


class MissingPackageError(InputError):
    """An export-only package is not installed; the message says how to get it."""


def require(module: str, purpose: str):
    """Import `module`, or stop with one line naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(
            f"{purpose} needs the Python package {module!r}: {INSTALL_HINT}"
        ) from None


def format_of(path: str) -> str:
    """'saved_model', 'tflite' or 'onnx', from what `path` is."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    if path.endswith(".tflite") and os.path.isfile(path):
        return "tflite"
    if path.endswith(".onnx") and os.path.isfile(path):
        return "onnx"
    raise InputError(
        f"--model {path!r} is not a .keras file, a SavedModel folder (with "
        "saved_model.pb), a .tflite or an .onnx file; export one with export.py."
    )


def read_metadata(path: str) -> dict:
    """`export.json` from the artefact's folder (a SavedModel: its parent), or {}."""
    folder = os.path.dirname(os.path.abspath(path.rstrip(os.sep)))
    metadata_path = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(metadata_path):
        return {}
    with open(metadata_path) as f:
        return json.load(f)


class ExportedModel:
    """An exported segmentation model behind one small interface.

    `run(images)` takes uint8 `(B, H, W, 3)` (for a model of other images,
    `(B, H, W, bands)` of `input_dtype`, both read from the file) and returns
    the signature's outputs as NumPy arrays: {"labels": (B, H, W) uint8,
    "probabilities": (B, H, W, C) float32}. Subclasses implement `run` for
    one runtime and set `bands` and `input_dtype` from the file.
    """

    # `common.inference` pads to a multiple of this before calling the model;
    # the exported graph pads by itself, with the exact mean, so 1 (no padding).
    size_divisor = 1
    # The input the file takes: RGB, unless a subclass reads otherwise from it.
    bands = 3
    input_dtype = np.dtype(np.uint8)

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path.rstrip(os.sep))
        self.metadata = read_metadata(path)
        self.class_names = self.metadata.get("class_names")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def output_shape(self) -> tuple:
        """Like a Keras model's: `(None, None, None, num_classes)`."""
        num_classes = self.metadata.get("num_classes")
        if num_classes is None:  # No export.json: ask the model itself.
            probe = self.run(np.zeros((1, 32, 32, self.bands), self.input_dtype))
            num_classes = probe.get("probabilities", np.zeros((0,))).shape[-1] or None
        return (None, None, None, num_classes)

    def __call__(self, images, training: bool = False) -> tf.Tensor:
        """Log-probabilities `(B, H, W, C)` for float images in [0, 255]
        (or as stored, for a float32 signature)."""
        images = np.asarray(images)
        if self.input_dtype == np.uint8:
            images = np.clip(np.round(images), 0, 255)
        outputs = self.run(images.astype(self.input_dtype))
        if "probabilities" not in outputs:
            raise InputError(
                f"{self.path} was exported with --no-probabilities: it gives class "
                "indices only, so it cannot be averaged over scales or flips."
            )
        return tf.math.log(tf.constant(outputs["probabilities"]))


class SavedModelRunner(ExportedModel):
    """TensorFlow SavedModel (what TensorFlow Serving loads), via `serving_default`."""

    def __init__(self, path: str):
        super().__init__(path)
        self.signature = tf.saved_model.load(path).signatures["serving_default"]
        spec = self.signature.structured_input_signature[1]["images"]
        self.bands, self.input_dtype = spec.shape[-1], np.dtype(spec.dtype.name)

    def run(self, images):
        outputs = self.signature(images=tf.constant(images, self.input_dtype))
        return {name: value.numpy() for name, value in outputs.items()}


class LiteRTRunner(ExportedModel):
    """LiteRT (TFLite) interpreter; it re-allocates its buffers for each new size."""

    def __init__(self, path: str, num_threads: int | None = None):
        super().__init__(path)
        litert = require("ai_edge_litert.interpreter", "Running a .tflite model")
        self.interpreter = litert.Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        spec = self.runner.get_input_details()["images"]
        self.bands, self.input_dtype = spec["shape"][-1], np.dtype(spec["dtype"])

    def run(self, images):
        # LiteRT announces its XNNPACK delegate on stderr at the first run.
        with console.quiet_stderr():
            images = np.ascontiguousarray(images, self.input_dtype)
            return dict(self.runner(images=images))


# The input types export.py writes, as ONNX Runtime names them.
ONNX_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxRunner(ExportedModel):
    """ONNX Runtime on the CPU."""

    def __init__(self, path: str, num_threads: int | None = None):
        super().__init__(path)
        onnxruntime = require("onnxruntime", "Running an .onnx model")
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        signature = self.session.get_inputs()[0]
        self.input_name = signature.name
        self.bands = signature.shape[-1]
        self.input_dtype = np.dtype(ONNX_TYPES[signature.type])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, images):
        images = images.astype(self.input_dtype)
        values = self.session.run(None, {self.input_name: images})
        return dict(zip(self.output_names, values))


RUNNERS = {"saved_model": SavedModelRunner, "tflite": LiteRTRunner, "onnx": OnnxRunner}


def load_exported(path: str) -> ExportedModel:
    """Open a SavedModel folder, `.tflite` or `.onnx` file written by export.py."""
    return RUNNERS[format_of(path)](path)
