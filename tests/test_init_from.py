"""--init-from: start a run from a trained model, also one with other classes."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import fcn_train
import segnet_train
import unet_train
from common import training
from common.errors import InputError
from common.inference import load_model


def tiny_argv(data_argv, output_dir, *extra):
    return [
        *data_argv,
        "--output-dir",
        str(output_dir),
        "--crop-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--val-steps",
        "1",
        "--num-predictions",
        "0",
        *extra,
    ]


def shapes_argv(shapes_dir):
    return ["--dataset", "shapes", "--data-dir", shapes_dir]  # 6 classes.


def two_class_argv(tmp_path):
    """A `--dataset folder` of 4 + 2 noise images, left half class 0, right class 1."""
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 1
    for split, count in (("train", 4), ("val", 2)):
        for folder in ("images", "masks"):
            (tmp_path / "data" / split / folder).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(image).save(
                tmp_path / "data" / split / "images" / f"{i}.png"
            )
            Image.fromarray(mask).save(tmp_path / "data" / split / "masks" / f"{i}.png")
    data_dir = str(tmp_path / "data")
    return ["--dataset", "folder", "--data-dir", data_dir, "--num-classes", "2"]


def layer_weights(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


@pytest.fixture()
def weights_after_init_from(monkeypatch):
    """Per run with --init-from: the layers copied, and every layer's weights then."""
    calls = []
    real_init_from = training.init_from

    def init_from(model, args):
        copied = real_init_from(model, args)
        if args.init_from:
            calls.append((copied, layer_weights(model)))
        return copied

    monkeypatch.setattr(training, "init_from", init_from)
    return calls


class StopBeforeEpoch(keras.callbacks.Callback):
    """Simulates a run killed after `epoch` finished epochs."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


UNET = ["--filters", "4", "8", "16", "32"]


@pytest.fixture(scope="module")
def six_class_unet(shapes_dir, tmp_path_factory) -> str:
    """The best.keras of a one-step U-Net run on shapes (6 classes)."""
    output_dir = tmp_path_factory.mktemp("six")
    unet_train.main(tiny_argv(shapes_argv(shapes_dir), output_dir, *UNET))
    return str(output_dir / "best.keras")


def test_unet_fine_tunes_a_six_class_run_on_two_classes(
    six_class_unet, tmp_path, capsys, weights_after_init_from
):
    source = layer_weights(load_model(six_class_unet))
    output_dir = tmp_path / "two"
    argv = tiny_argv(two_class_argv(tmp_path), output_dir, *UNET)
    results = unet_train.main([*argv, "--init-from", six_class_unet])

    [(copied, initial)] = weights_after_init_from
    assert set(copied) == set(source) - {"logits"}
    for name in copied:  # Exactly the source's values, BN statistics included.
        for got, expected in zip(initial[name], source[name], strict=True):
            np.testing.assert_array_equal(got, expected)
    assert initial["logits"][0].shape == (1, 1, 4, 2)  # Re-initialised for 2.
    assert source["logits"][0].shape == (1, 1, 4, 6)
    assert (
        f"Initialised {len(copied)} of {len(copied) + 1} layers with weights from "
        f"{six_class_unet} (unet); not copied: logits (other shapes)"
    ) in capsys.readouterr().out
    assert len(results["per_class_iou"]) == 2
    with open(output_dir / "results.json") as f:
        assert json.load(f)["settings"]["init_from"] == six_class_unet
    finished = load_model(str(output_dir / "best.keras"))
    assert finished.get_layer("logits").kernel.shape == (1, 1, 4, 2)


def test_a_resumed_run_restores_its_own_weights_instead(
    six_class_unet, tmp_path, monkeypatch, capsys, weights_after_init_from
):
    argv = tiny_argv(two_class_argv(tmp_path), tmp_path / "two", *UNET)
    argv += ["--epochs", "2", "--init-from", six_class_unet]
    make_callbacks = training.make_callbacks
    monkeypatch.setattr(
        training, "make_callbacks", lambda *a: make_callbacks(*a) + [StopBeforeEpoch(1)]
    )
    with pytest.raises(training.TrainingInterrupted):
        unet_train.main(argv)  # Copies, trains one epoch, stops.
    monkeypatch.setattr(training, "make_callbacks", make_callbacks)
    results = unet_train.main(argv)  # Resumes from its backup.

    [(copied_at_start, _), (copied_on_resume, _)] = weights_after_init_from
    assert copied_at_start and copied_on_resume == []
    out = capsys.readouterr().out
    assert f"Resuming: --init-from {six_class_unet} is not applied again." in out
    assert results["epochs_this_run"] == 1
    assert results["optimizer_steps"] == 2  # The first epoch's step came back.


def test_fcn_16s_starts_from_fcn_32s_through_the_flag(
    shapes_dir, tmp_path, capsys, weights_after_init_from
):
    """Sec. 4.2's staged training, without the ImageNet download for the 16s."""
    fcn = ["--width", str(1 / 16), "--backbone-weights", "none"]
    coarse_argv = tiny_argv(shapes_argv(shapes_dir), tmp_path / "32s", *fcn)
    fcn_train.main([*coarse_argv, "--variant", "32s"])
    source_path = str(tmp_path / "32s" / "best.keras")
    source = layer_weights(load_model(source_path))

    fine_argv = tiny_argv(
        shapes_argv(shapes_dir), tmp_path / "16s", "--width", "0.0625"
    )
    fcn_train.main([*fine_argv, "--variant", "16s", "--init-from", source_path])

    [(copied, initial)] = weights_after_init_from
    assert set(copied) == set(source) - {"upscore"}
    for name in ("block1_conv1", "fc6", "score_fr"):
        for got, expected in zip(initial[name], source[name], strict=True):
            np.testing.assert_array_equal(got, expected)
    assert not np.any(initial["score_pool4"][0])  # Starts as the 32s net.
    assert "not copied: upscore2 (new), score_pool4 (new), upscore16 (new)" in (
        capsys.readouterr().out
    )


def test_a_missing_file_or_another_architecture_is_one_line(
    six_class_unet, shapes_dir, tmp_path
):
    data = shapes_argv(shapes_dir)
    missing = str(tmp_path / "unet-shapes" / "best.keras")
    with pytest.raises(InputError, match="--init-from .*: no such file") as error:
        unet_train.main(tiny_argv(data, tmp_path / "a", "--init-from", missing))
    assert "\n" not in str(error.value)

    segnet_argv = tiny_argv(data, tmp_path / "segnet", "--variant", "basic")
    with pytest.raises(InputError, match="no layer of this unet model") as error:
        segnet_train.main([*segnet_argv, "--init-from", six_class_unet])
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "segnet")  # Nothing started.

    not_a_model = os.path.join(os.path.dirname(six_class_unet), "results.json")
    with pytest.raises(InputError, match="Cannot load .*results.json") as error:
        segnet_train.main([*segnet_argv, "--init-from", not_a_model])
    assert "\n" not in str(error.value)
