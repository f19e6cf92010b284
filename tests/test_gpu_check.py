"""bench/gpu_check.py: its CPU dry run as the GPU machine runs it, without TensorFlow.

The GPU machine (docs/gpu.md) has JAX and no TensorFlow; the dry run takes
the same path on CPU at tiny sizes, with TensorFlow hidden from the process
(tests/hide_tensorflow), so the check still works on the day a GPU is lent.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench import gpu_check
from common import cache, voc
from common.inference import load_model
from common.shapes import SHAPES_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDE_TENSORFLOW = os.path.join(ROOT, "tests", "hide_tensorflow")


@pytest.fixture(scope="module")
def shapes_cache(shapes_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("cache"))
    dataset = voc.DatasetSpec(shapes_dir, "voc", SHAPES_CLASSES)
    cache.write_cache(dataset, ["train", "val"], out)
    return out


def test_dry_run_trains_a_recipe_and_times_a_model_without_tensorflow(
    shapes_cache, tmp_path
):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", str(out)]
        + ["--cache", shapes_cache, "--speed-s", "900"],  # A loaded CPU is slow.
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": HIDE_TENSORFLOW, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())

    (run,) = report["camvid"]
    assert run["recipe"] == "unet" and run["status"] == 0, run
    assert 0 <= run["mean_iou"] <= 1 and set(run["per_class_iou"]) == set(
        SHAPES_CLASSES
    )
    results = json.loads((out / "runs" / "unet" / "results.json").read_text())
    assert results["training"]["backend"] == "jax"
    assert results["settings"]["mixed_precision"] is True
    assert "TensorBoard: off" in (out / "unet.log").read_text()

    (data,) = report["data"]  # Cache batches against one repeated batch.
    assert "error" not in data and data["model"] == "U-Net 4-8", data
    assert data["real_ms_step"] > 0 and data["repeated_ms_step"] > 0
    assert data["ratio"] == pytest.approx(
        data["repeated_ms_step"] / data["real_ms_step"]
    )

    speed = {(row["model"], row["precision"]): row for row in report["speed"]}
    assert set(speed) == {("unet", "float32"), ("unet", "bfloat16")}
    assert all(row["ms_step"] > 0 and "error" not in row for row in speed.values())
    # FLOPs from XLA's cost analysis of the paper U-Net at 32x32: its
    # convolutions are 1.51 GFLOP forward (counted from its layers' shapes);
    # forward and backward XLA counts 3.75, about 2.5 times that.
    assert all(2 * 1.51 < row["gflop_step"] < 3.2 * 1.51 for row in speed.values())
    assert report["peak_tflops"] > 0
    for row in speed.values():
        share = row["gflop_step"] / row["ms_step"] / report["peak_tflops"]
        assert row["peak_share"] == pytest.approx(share)
    table = (out / "gpu_check.md").read_text()
    assert table.startswith(f"# GPU check: {report['device']}\n")
    assert f"{run['mean_iou']:.3f}" in table

    # The model trained on JAX, stripped of its optimizer, loads and predicts
    # on this process's backend (TensorFlow in the suite's main run).
    model = load_model(str(out / "weights" / "unet.keras"))
    assert getattr(model, "optimizer", None) is None
    logits = np.asarray(model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0))
    assert logits.shape == (1, 32, 32, len(SHAPES_CLASSES))
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("recipe", list(gpu_check.CAMVID_RECIPES))
def test_each_camvid_recipe_parses_with_its_script(recipe):
    script, *flags = gpu_check.CAMVID_RECIPES[recipe]
    module = importlib.import_module(script.removesuffix(".py"))
    args = module.parse_args([*gpu_check.GPU_FLAGS, "--data-dir", "cache", *flags])
    assert (args.dataset, args.crop_size, args.batch_size) == ("cache", 352, 16)
    assert args.mixed_precision and args.image_scale == 1


def test_without_a_gpu_the_full_run_stops_in_one_line(tmp_path):
    if not gpu_check.device_name().startswith("CPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as stop:
        gpu_check.main([str(tmp_path / "out")])
    assert "sees no GPU" in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "out").exists()
