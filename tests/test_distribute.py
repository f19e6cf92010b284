"""tf.distribute: two CPU replicas match one device; precision; XLA."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

from common import distribute
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
    from common.layers import synchronize_batch_norm

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 32, 32)).astype("int32")
    masks[:, :4] = 255
    data = tf.data.Dataset.from_tensors((images, masks)).repeat()
    # For batch norm, replica 1 gets 2 dark images and replica 2 two bright ones.
    contrast = images * np.array([0.1, 0.1, 1, 1], "float32")[:, None, None, None]
    contrast_data = tf.data.Dataset.from_tensors((contrast, masks)).repeat()

    def conv_bn(num_classes):
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = keras.layers.BatchNormalization()(x)
        return keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(x))

    def unet(num_classes):
        return build_unet(num_classes, batch_norm=False, filters=(4, 8, 16, 32))

    def run(strategy, build=unet, data=data, sync_bn=False):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = build(3)
            if sync_bn:
                synchronize_batch_norm(model)
            metric = ConfusionMatrix(3)
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=segmentation_loss(), metrics=[metric])
        history = model.fit(data, epochs=2, steps_per_epoch=1, verbose=0)
        model.evaluate(data, steps=1, verbose=0)
        return history.history["loss"], metric.matrix.tolist()

    single = run(tf.distribute.get_strategy())
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync,
                      "single": single, "mirrored": run(mirrored),
                      "bn": run(tf.distribute.get_strategy(), conv_bn,
                                contrast_data)[0],
                      "bn_mirrored": run(mirrored, conv_bn, contrast_data)[0],
                      "sync_bn_mirrored": run(mirrored, conv_bn, contrast_data,
                                              sync_bn=True)[0]}))
    """
)


def test_two_cpu_replicas_train_like_one_device():
    """Same loss and confusion matrix on 2 replicas; BN needs --sync-bn for it."""
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
    # Batch norm: each replica normalises its 2 images unless synchronized,
    # when it uses the statistics of all 4, as the single device does.
    np.testing.assert_allclose(result["sync_bn_mirrored"], result["bn"], rtol=1e-4)
    assert not np.allclose(result["bn_mirrored"], result["bn"], rtol=1e-3)


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

    # The smallest model will do: XLA compiles every op of the train step, and a
    # U-Net's take it half a minute on 2 cores.
    model = keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Conv2D(6, 3, padding="same")]
    )
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
