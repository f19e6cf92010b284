"""One code path for one CPU, several GPUs or a TPU: `tf.distribute`.

The training scripts build and compile their model inside `strategy.scope()`
and Keras' `fit` does the rest: it splits each global batch over the replicas,
all-reduces the gradients, and sums the metric variables (our confusion
matrix) across replicas, so validation mean IoU is the same as on one device.

Several machines (`MultiWorkerMirroredStrategy`) are not offered yet: with
TensorFlow 2.21 and Keras 3.15, `model.fit` fails under that strategy before
the first step (keras-team/keras#20585, tensorflow/tensorflow#72388; checked
here with two local workers). `--strategy multiworker` says so instead of
crashing inside Keras.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common.voc import InputError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy when more than one GPU is visible, else the default."""
    if name == "auto":
        name = (
            "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        raise InputError(
            "--strategy multiworker: Keras 3's model.fit does not run under "
            "MultiWorkerMirroredStrategy yet (keras-team/keras#20585). Use one "
            "machine with --strategy mirrored."
        )
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise InputError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy: float16 on GPU, bfloat16 elsewhere.

    Each model's last layer has `dtype="float32"`, so logits, softmax and the
    loss stay float32; `compile` adds loss scaling for float16 by itself.
    """
    if not mixed:
        policy = "float32"
    elif tf.config.list_physical_devices("GPU"):
        policy = "mixed_float16"
    else:
        policy = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy
