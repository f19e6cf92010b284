"""The benchmarks' oneDNN switch: each setting reaches its own fresh process."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from bench import conv_paths, train_speed
from bench.harness import ONEDNN, cpu_description, in_fresh_process


@pytest.mark.parametrize("mode, expected", [("off", False), ("on", True)])
def test_each_setting_reaches_a_fresh_process(mode, expected):
    assert in_fresh_process(train_speed.onednn_is_on, env=ONEDNN[mode]) is expected


def test_the_environment_is_restored_afterwards(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    in_fresh_process(train_speed.onednn_is_on, env=ONEDNN["on"])
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ


def test_cpu_description_names_cores_and_features():
    description = cpu_description()
    assert "cores; features:" in description


def test_comparison_table_gives_each_ratio_to_the_first_setting(capsys):
    def row(ms: float) -> dict:
        return {"model": "fcn8s", "ms_step": ms, "infer_ips": 2.0}

    train_speed.print_comparison({"off": [row(4000)], "on": [row(5000)]}, "oneDNN ")
    line = capsys.readouterr().out.splitlines()[-1]
    assert "4000 ms (1.00x)" in line and "5000 ms (1.25x)" in line


def test_conv_paths_layers_pick_the_product_where_the_rule_says():
    """The benchmark times the same layers the models use, by their own rule."""
    fc6 = conv_paths.layer_for(7, 1, 8)
    aspp = conv_paths.layer_for(3, 18, 8)
    block = conv_paths.layer_for(3, 2, 8)
    assert fc6._product_is_faster(tf.zeros((1, 4, 4, 2)))
    assert aspp._product_is_faster(tf.zeros((1, 32, 32, 2)))
    assert not block._product_is_faster(tf.zeros((1, 32, 32, 2)))
