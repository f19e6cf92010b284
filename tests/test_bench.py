"""The benchmarks time each model at its script's own default crop."""

import pytest

import deeplab_train
import fcn_train
import segnet_train
import unet_train
from bench.harness import MODELS, SCRIPT_CROP

SCRIPTS = {
    "fcn8s": fcn_train,
    "unet": unet_train,
    "segnet": segnet_train,
    "deeplabv3plus_resnet50": deeplab_train,
    "deeplabv3_mobilenetv2": deeplab_train,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_bench_crop_is_the_scripts_default(name):
    assert SCRIPT_CROP[name] == SCRIPTS[name].parse_args([]).crop_size
