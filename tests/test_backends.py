"""The scripts on every Keras backend (#37): without TensorFlow, and across backends.

CI runs the suite with Keras on TensorFlow, then the tests marked `backends`
again with `KERAS_BACKEND=jax`. The tests here start a second Python for the
other side: JAX with TensorFlow hidden (`tests/hide_tensorflow`, as on the GPU
machine of docs/gpu.md) when this process runs TensorFlow, TensorFlow when it
runs JAX. The second Python runs this file (`python -m tests.test_backends
COMMAND FOLDER...`, `main` at the bottom), so both sides build the same models.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import deeplab_train
import fcn_train
import segnet_train
import unet_train
from common import cache, voc
from common.inference import load_model, save_with_float16_weights
from common.layers import bilinear_kernel
from common.shapes import SHAPES_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDE_TENSORFLOW = os.path.join(ROOT, "tests", "hide_tensorflow")
THIS_BACKEND = keras.backend.backend()
OTHER_BACKEND = "jax" if THIS_BACKEND == "tensorflow" else "tensorflow"

# What a JAX training run imports, besides the four scripts: none of it may
# import TensorFlow (common.backend's `tf` loads it on first use only).
TRAINING_STACK = (
    "augment",
    "backbones",
    "cache",
    "cli",
    "inference",
    "layers",
    "losses",
    "metrics",
    "training",
)
MODEL_NAMES = ("segnet_basic", "deeplab_v3plus", "fcn8s", "unet_valid")
# Each model is saved twice: NAME.keras, and NAME.float16.keras with its
# weights stored as float16 (`save_with_float16_weights`, for weights/).
FILE_KINDS = ("", ".float16")
# Odd sizes on SegNet's way down (26, 13, 7, 4); the valid U-Net of depth 2
# returns the centre 8x12 (`unet_train.valid_output_size`).
IMAGES = np.random.default_rng(0).uniform(0, 255, (2, 48, 52, 3)).astype("float32")
UPSAMPLING_FACTORS = (2, 8, 32)
SCORES = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype("float32")


def tiny_models() -> dict[str, keras.Model]:
    """Each script's model, small, with the custom layers its `.keras` file holds.

    Every weight is drawn from one seeded numpy generator, so each process
    builds the same models: Keras' own initial draws made SegNet-Basic's
    comparison pass or fail by draw (see `PIXELS_NEAR_TIES`), and
    `keras.utils.set_random_seed` would look for TensorFlow.
    """
    models = {
        # MaxPoolingWithArgmax2D and MaxUnpooling2D: the indices are recomputed.
        "segnet_basic": segnet_train.build_segnet(3, variant="basic"),
        # ResizeLike, AtrousConv2D, CaffeNormalization.
        "deeplab_v3plus": deeplab_train.build_deeplab(
            3, "v3plus", "resnet50", resnet_blocks=(1, 1, 1, 1), head_filters=16
        ),
        # Conv2DTranspose (stride 2 and 8) with the BilinearUpsampling
        # initializer, PadToMultiple, CropToMatch("top_left").
        "fcn8s": fcn_train.build_fcn(3, "8s", width=1 / 16),
        # CropToMatch of the skips, Conv2DTranspose of stride 2.
        "unet_valid": unet_train.build_unet(3, padding="valid", filters=(4, 8)),
    }
    rng = np.random.default_rng(2)
    for model in models.values():
        model.set_weights([seeded(weight, rng) for weight in model.get_weights()])
    return models


def seeded(weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A kernel drawn as He normal; zeros (biases, BN offsets, FCN's score
    layers) made random too, so every weight counts; BN's ones kept."""
    if weight.ndim >= 2:
        fan_in = int(np.prod(weight.shape[:-1]))
        return rng.normal(0, np.sqrt(2 / fan_in), weight.shape)
    return weight if np.any(weight) else rng.normal(0, 0.1, weight.shape)


def save_models(folder: str, models: dict[str, keras.Model]) -> None:
    """Save each model as NAME.keras and NAME.float16.keras, and its logits for
    IMAGES as NAME.npy."""
    os.makedirs(folder)
    for name, model in models.items():
        model.save(os.path.join(folder, f"{name}.keras"))
        save_with_float16_weights(model, os.path.join(folder, f"{name}.float16.keras"))
        np.save(os.path.join(folder, f"{name}.npy"), model.predict(IMAGES, verbose=0))


def predict_saved(folder: str) -> dict[str, np.ndarray]:
    """The logits for IMAGES of each file in `folder`, loaded by predict.py's
    `load_model`, by file stem (NAME or NAME.float16)."""
    return {
        name + kind: load_model(os.path.join(folder, f"{name}{kind}.keras")).predict(
            IMAGES, verbose=0
        )
        for name in MODEL_NAMES
        for kind in FILE_KINDS
    }


def bilinear_upsampled(factor: int) -> np.ndarray:
    """SCORES through FCN's own upsampling layer (kernel 2*factor, stride factor)."""
    upsampled = fcn_train.bilinear_upsampling(
        SCORES, factor, trainable=False, name=f"upscore{factor}"
    )
    return keras.ops.convert_to_numpy(upsampled)


def reference_upsampling(scores: np.ndarray, factor: int) -> np.ndarray:
    """The transposed convolution written out in numpy: (b, h, w, c) -> (b, fh, fw, c).

    Score (i, j) adds the bilinear kernel at pixels [f*i, f*i + 2f) of the
    uncropped output, centred on f*i + f - 1/2. Cropping f/2 from the top and
    left centres it on f*i + (f-1)/2, the middle of the f pixels of cell i:
    the alignment FCN needs. A layer one pixel off misses this everywhere.
    """
    batch, height, width, channels = scores.shape
    kernel = bilinear_kernel(2 * factor)[None, :, :, None]
    full = np.zeros((batch, (height + 1) * factor, (width + 1) * factor, channels))
    for i in range(height):
        for j in range(width):
            rows = slice(factor * i, factor * (i + 2))
            columns = slice(factor * j, factor * (j + 2))
            full[:, rows, columns] += scores[:, i, j, None, None, :] * kernel
    start = factor // 2
    return full[:, start : start + factor * height, start : start + factor * width]


def run_python(arguments: list[str], keras_backend: str) -> str:
    """Run `python ARGUMENTS` in the repository with Keras on `keras_backend`.

    On JAX, TensorFlow is hidden, as on a machine without it. Returns stdout.
    """
    env = {**os.environ, "KERAS_BACKEND": keras_backend}
    if keras_backend == "jax":
        env["PYTHONPATH"] = HIDE_TENSORFLOW
        # XLA's CPU compiler spends a second or more optimising the random
        # numbers of each weight shape's initializer (one compile per shape):
        # three quarters of building the tiny models. They run fine unoptimised.
        flags = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
        env["XLA_FLAGS"] = flags.strip()
    done = subprocess.run(
        [sys.executable, *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# --------------------------------------------------------------------------
# A .keras saved on one backend loads on the other with the same logits
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exchange(tmp_path_factory) -> dict:
    """Models saved here and on the other backend, and each loaded on the other.

    The other side also reports which TensorFlow modules it had loaded, or
    tried to import, before it saved (see `main`).
    """
    folder = tmp_path_factory.mktemp("exchange")
    here, there = str(folder / "saved_here"), str(folder / "saved_there")
    save_models(here, tiny_models())
    output = run_python(
        ["-m", "tests.test_backends", "exchange", here, there], OTHER_BACKEND
    )
    return {
        "here": here,
        "there": there,
        "loaded_here": predict_saved(there),
        "report": json.loads(output.strip().splitlines()[-1]),
    }


# SegNet's pooling indices: where two values of a window are within the
# backends' rounding of each other, each backend may pick another winner and
# unpool it to another pixel, which moves the logits around it. On random
# weights that was 7% of SegNet-Basic's pixels (TensorFlow with oneDNN against
# JAX); a systematic fault (indices off by one, a shifted layer) moves most.
PIXELS_NEAR_TIES = {"segnet_basic": 0.15}


# Weights rounded to float16 moved the tiny models' logits by at most 1e-3 of
# the largest (SegNet's aside); bfloat16's 8 bits would move them 8 times as far.
FLOAT16_ROUNDING = 4e-3


def assert_same_logits(
    loaded: np.ndarray, saved: np.ndarray, name: str, tolerance: float = 1e-5
) -> None:
    assert loaded.shape == saved.shape
    # Logits that vary across pixels and classes, so a comparison means something.
    assert saved.std(axis=(1, 2)).min() > 1e-3 and saved.std(axis=-1).min() > 1e-4
    # Backends sum convolutions in different orders: about 1e-6 of the largest
    # logit apart (`tolerance`). A layer one pixel off moves logits by their own size.
    close = np.isclose(loaded, saved, rtol=0, atol=tolerance * np.abs(saved).max())
    pixels_apart = 1 - close.all(axis=-1).mean()
    assert pixels_apart <= PIXELS_NEAR_TIES.get(name, 0), (
        f"{name}: {pixels_apart:.1%} of the pixels' logits differ between backends"
    )


@pytest.mark.backends
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_saved_here_predicts_the_same_on_the_other_backend(exchange, name):
    here = exchange["here"]
    saved = np.load(os.path.join(here, f"{name}.npy"))
    expected_shape = (2, 8, 12, 3) if name == "unet_valid" else (2, 48, 52, 3)
    assert saved.shape == expected_shape
    assert_same_logits(
        np.load(os.path.join(here, "loaded_there", f"{name}.npy")), saved, name
    )


@pytest.mark.backends
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_saved_on_the_other_backend_predicts_the_same_here(exchange, name):
    saved = np.load(os.path.join(exchange["there"], f"{name}.npy"))
    assert_same_logits(exchange["loaded_here"][name], saved, name)


@pytest.mark.backends
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float16_weights_from_the_other_backend_predict_alike_here(exchange, name):
    """weights/'s files: saved with float16 weights on one backend (the GPU's
    JAX), loaded on the other (a user's TensorFlow), computing in float32."""
    saved = np.load(os.path.join(exchange["there"], f"{name}.npy"))
    loaded = exchange["loaded_here"][f"{name}.float16"]
    if name in PIXELS_NEAR_TIES:  # Rounding moves 34% of SegNet's logits this way:
        # near ties pick other winners. Its classes agree on 99% of the pixels.
        assert (loaded.argmax(-1) == saved.argmax(-1)).mean() >= 0.98
    else:
        assert_same_logits(loaded, saved, name, FLOAT16_ROUNDING)
    assert not np.array_equal(loaded, exchange["loaded_here"][name])  # Rounded.


@pytest.mark.backends
def test_float16_weights_halve_the_file(exchange):
    full, half = (
        os.path.getsize(os.path.join(exchange["here"], f"deeplab_v3plus{kind}.keras"))
        for kind in FILE_KINDS
    )
    assert 0.45 < half / full < 0.55


# --------------------------------------------------------------------------
# Nothing imports TensorFlow that does not need it
# --------------------------------------------------------------------------


def test_scripts_load_build_and_predict_on_jax_without_tensorflow(exchange):
    """The JAX side of the exchange imported the scripts and TRAINING_STACK,
    loaded, built and ran every model, and never looked for TensorFlow."""
    if OTHER_BACKEND != "jax":
        pytest.skip("the JAX side here is this process, which TensorFlow tests share")
    assert exchange["report"] == {
        "backend": "jax",
        "tensorflow_modules": [],
        "refused_imports": [],
    }


def test_help_without_tensorflow():
    help_text = run_python(["unet_train.py", "--help"], "jax")
    assert help_text.startswith("usage: unet_train.py") and "--dataset" in help_text


def test_unet_trains_from_a_cache_on_jax_without_tensorflow(shapes_dir, tmp_path):
    """docs/gpu.md's path: a cache written where TensorFlow is, trained where not."""
    cache_dir = str(tmp_path / "cache")
    dataset = voc.DatasetSpec(shapes_dir, "voc", SHAPES_CLASSES)
    cache.write_cache(dataset, ["train", "val"], cache_dir)
    output_dir = tmp_path / "run"
    # fmt: off
    output = run_python([
        "unet_train.py", "--dataset", "cache", "--data-dir", cache_dir,
        "--output-dir", str(output_dir), "--filters", "4", "8", "--crop-size", "32",
        "--batch-size", "2", "--epochs", "2", "--steps-per-epoch", "2",
        "--val-steps", "1", "--num-predictions", "1",
    ], "jax")
    # fmt: on
    assert "TensorBoard: off" in output
    results = json.loads((output_dir / "results.json").read_text())
    assert results["training"]["backend"] == "jax"
    assert results["epochs_this_run"] == 2 and results["optimizer_steps"] == 4
    assert np.isfinite(results["final_train_loss"]) and 0 <= results["mean_iou"] <= 1
    assert list(results["per_class_iou"]) == list(SHAPES_CLASSES)
    for name in ("best.keras", "history.csv", "predictions.png"):
        assert (output_dir / name).is_file(), name


# --------------------------------------------------------------------------
# Conv2DTranspose with strides > 1 puts every score where FCN needs it
# --------------------------------------------------------------------------


@pytest.mark.parametrize("keras_backend", ["tensorflow", "jax", "torch"])
def test_bilinear_upsampling_is_aligned_on_every_backend(keras_backend, tmp_path):
    """Keras 3 shifted strided Conv2DTranspose by one pixel on PyTorch (fixed
    in 2026): FCN's upsampling layer, on each installed backend, against numpy."""
    if importlib.util.find_spec(keras_backend) is None:
        pytest.skip(f"{keras_backend} is not installed")
    if keras_backend == THIS_BACKEND:
        upsampled = {
            factor: bilinear_upsampled(factor) for factor in UPSAMPLING_FACTORS
        }
    else:
        run_python(
            ["-m", "tests.test_backends", "upsample", str(tmp_path)], keras_backend
        )
        upsampled = {
            factor: np.load(tmp_path / f"upsampled{factor}.npy")
            for factor in UPSAMPLING_FACTORS
        }
    for factor in UPSAMPLING_FACTORS:
        expected = reference_upsampling(SCORES, factor)
        assert upsampled[factor].shape == (2, 3 * factor, 4 * factor, 5)
        np.testing.assert_allclose(upsampled[factor], expected, atol=1e-5)


def test_reference_upsampling_centres_each_score_on_its_cell():
    """The reference itself: a one-hot score lands on the middle of its cell."""
    for factor in UPSAMPLING_FACTORS:
        impulse = np.zeros((1, 3, 4, 1))
        impulse[0, 1, 2, 0] = 1.0
        response = reference_upsampling(impulse, factor)[0, :, :, 0]
        rows, columns = np.indices(response.shape)
        centre = [(rows * response).sum(), (columns * response).sum()]
        expected = [factor * 1 + (factor - 1) / 2, factor * 2 + (factor - 1) / 2]
        np.testing.assert_allclose(np.array(centre) / response.sum(), expected)


# --------------------------------------------------------------------------
# The other side, run by the tests above in a second Python
# --------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """`exchange HERE THERE`: load HERE's models, save logits in HERE/loaded_there,
    save this backend's models in THERE, print a report; `upsample OUT`."""
    command, *folders = argv
    if command == "upsample":
        for factor in UPSAMPLING_FACTORS:
            np.save(
                os.path.join(folders[0], f"upsampled{factor}.npy"),
                bilinear_upsampled(factor),
            )
        return
    here, there = folders
    for module in TRAINING_STACK:
        importlib.import_module(f"common.{module}")
    os.makedirs(os.path.join(here, "loaded_there"))
    for name, logits in predict_saved(here).items():
        np.save(os.path.join(here, "loaded_there", f"{name}.npy"), logits)
    models = tiny_models()
    for model in models.values():
        model.predict(IMAGES, verbose=0)
    # Before saving: Keras' own serialization looks for TensorFlow
    # (`serialization_lib`, `tf.available`), and imports it where installed.
    hidden = sys.modules.get("sitecustomize")
    report = {
        "backend": keras.backend.backend(),
        "tensorflow_modules": sorted(
            name
            for name in sys.modules
            if name.split(".")[0] in ("tensorflow", "tensorboard")
        ),
        "refused_imports": list(getattr(hidden, "REFUSED", [])),
    }
    save_models(there, models)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
