"""bench/train_speed.py --backend: each backend in its own process, side by side.

Keras reads `KERAS_BACKEND` when it is imported, so the benchmark can only
switch backends between processes; these tests check that the setting reaches
a fresh process, that a measurement there runs on JAX with TensorFlow
hidden, and that the tables say which numbers were not measured.
"""

from __future__ import annotations

import os

import pytest

from bench import train_speed
from bench.harness import in_fresh_process
from common import backend

HIDE_TENSORFLOW = os.path.join(os.path.dirname(__file__), "hide_tensorflow")


def measure_here(name: str, argv: list[str]) -> tuple:
    """This process's backend, and `measure`'s row for `name` in it."""
    row = train_speed.measure(name, train_speed.parse_args(argv), rate=None)
    return backend.name(), row


@pytest.mark.parametrize("backend_name", ["tensorflow", "jax"])
def test_each_backend_reaches_a_fresh_process(backend_name):
    name = in_fresh_process(backend.name, env={"KERAS_BACKEND": backend_name})
    assert name == backend_name


def test_a_jax_measurement_runs_without_tensorflow():
    argv = ["--crop-size", "32", "--batch-size", "1", "--steps", "1"]
    # As on the GPU machine (docs/gpu.md): JAX, and no TensorFlow to import.
    hidden = os.pathsep.join(filter(None, [HIDE_TENSORFLOW, os.getenv("PYTHONPATH")]))
    name, row = in_fresh_process(
        measure_here,
        "deeplabv3_mobilenetv2",
        argv,
        env={"KERAS_BACKEND": "jax", "PYTHONPATH": hidden},
    )
    assert name == "jax"
    assert row["gflops"] is None and row["share"] is None
    assert row["ms_step"] > 0 and row["infer_ips"] > 0
    assert 2.0 < row["params_m"] < 2.5  # MobileNetV2 with the v3 head.


def test_the_default_stays_tensorflow_only():
    assert train_speed.parse_args([]).backend == ["tensorflow"]


def row(model: str, ms: float, infer: float = 2.0) -> dict:
    return {"model": model, "ms_step": ms, "infer_ips": infer}


def test_backend_table_gives_ratios_to_tensorflow_and_leaves_out_the_peer(capsys):
    train_speed.print_comparison(
        {
            "TensorFlow": [row("unet", 3000), row(train_speed.PEER, 9000)],
            "JAX": [row("unet", 4500)],
        }
    )
    heading, *lines = capsys.readouterr().out.strip().splitlines()
    assert heading == "TensorFlow vs JAX: ms/step (ratio to TensorFlow), infer img/s"
    assert len(lines) == 1 and lines[0].startswith("unet")
    assert "3000 ms (1.00x)" in lines[0] and "4500 ms (1.50x)" in lines[0]


def test_unmeasured_flops_show_as_a_dash(capsys):
    jax_row = {
        **row("unet", 4500),
        "params_m": 31.0,
        "gflops": None,
        "train_ips": 0.9,
        "peak_mb": 1500.0,
        "share": None,
    }
    train_speed.print_table([jax_row], "JAX:", peer_ms=None)
    cells = capsys.readouterr().out.splitlines()[-1].split()
    assert cells == ["unet", "31.0", "-", "0.90", "2.00", "4500", "1500", "-"]
