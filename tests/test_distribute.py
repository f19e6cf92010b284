"""tf.distribute: two CPU replicas match one device; two workers train; precision."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from common import distribute
from common.voc import InputError
from unet_train import build_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: logical devices must be set before TensorFlow starts.
MIRRORED_VS_SINGLE = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from unet_train import build_unet
    from common.losses import segmentation_loss
    from common.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 32, 32)).astype("int32")
    masks[:, :4] = 255
    data = tf.data.Dataset.from_tensors((images, masks)).repeat()

    def run(strategy):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = build_unet(3, batch_norm=False, filters=(4, 8, 16, 32))
            metric = ConfusionMatrix(3)
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=segmentation_loss(), metrics=[metric])
        history = model.fit(data, epochs=2, steps_per_epoch=1, verbose=0)
        model.evaluate(data, steps=1, verbose=0)
        return history.history["loss"], metric.matrix.numpy().tolist()

    single = run(tf.distribute.get_strategy())
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync,
                      "single": single, "mirrored": run(mirrored)}))
    """
)


def test_two_cpu_replicas_train_like_one_device():
    process = subprocess.run(
        [sys.executable, "-c", MIRRORED_VS_SINGLE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    (single_loss, single_matrix), (mirrored_loss, mirrored_matrix) = (
        result["single"],
        result["mirrored"],
    )
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-4)
    # The confusion matrix is summed over replicas, not averaged.
    assert mirrored_matrix == single_matrix
    assert np.sum(single_matrix) == 4 * 28 * 32


def test_multiworker_is_refused_clearly():
    with pytest.raises(InputError, match="keras-team/keras#20585"):
        distribute.make_strategy("multiworker")


def test_mixed_precision_keeps_logits_float32():
    try:
        assert distribute.set_precision(True) == "mixed_bfloat16"  # CPU
        model = build_unet(3, filters=(4, 8, 16, 32))
        assert model.get_layer("down1_conv1").compute_dtype == "bfloat16"
        assert model(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"
    finally:
        distribute.set_precision(False)


def test_fit_compiles_with_xla(shapes_dir):
    """The metric and loss must be XLA-compatible: Keras turns XLA on for one GPU."""
    from common.losses import segmentation_loss
    from common.metrics import ConfusionMatrix
    from common.voc import make_dataset

    model = build_unet(6, filters=(4, 8, 16, 32))
    model.compile(
        optimizer="adam",
        loss=segmentation_loss(),
        metrics=[ConfusionMatrix(6)],
        jit_compile=True,
    )
    data = make_dataset(shapes_dir, "train", 2, 32, training=True, num_classes=6)
    history = model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    keras.backend.clear_session()
