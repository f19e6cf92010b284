"""One code path for one CPU, several GPUs or a TPU: `tf.distribute`.

The training scripts build and compile their model inside `strategy.scope()`
and Keras' `fit` does the rest: it splits each global batch over the replicas,
all-reduces the gradients, and sums the metric variables (our confusion
matrix) across replicas, so validation mean IoU is the same as on one device.

Several machines (`--strategy multiworker`) use `MultiWorkerMirroredStrategy`,
configured by the `TF_CONFIG` environment variable that every worker gets. With
TensorFlow 2.21 and Keras 3.15, `model.fit` fails under that strategy before
the first step (keras-team/keras#20585, tensorflow/tensorflow#72388), so those
runs train with the custom loop of `common/multiworker.py` instead.

On JAX and PyTorch there is no `tf.distribute`: `make_strategy` returns a
`LocalDevices`, whose `scope()` changes nothing, and several local
accelerators train data-parallel through `keras.distribution.DataParallel`
(JAX only): each device takes a slice of the global batch, the gradients are
averaged, and BN's statistics are those of the whole batch (as `--sync-bn`).
Several machines stay TensorFlow's (`--strategy multiworker`).
"""

from __future__ import annotations

import contextlib
import json
import os

import keras

from common import backend
from common.backend import tf
from common.errors import InputError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


class LocalDevices:
    """The strategy of the JAX and PyTorch backends: this machine's devices.

    Has what the scripts use of a `tf.distribute.Strategy`: `scope()` (here a
    no-op: variables are placed by `keras.distribution`, if set) and
    `num_replicas_in_sync`, the devices that share each global batch.
    """

    @property
    def num_replicas_in_sync(self) -> int:
        distribution = keras.distribution.distribution()
        if distribution is None:
            return 1
        return len(distribution.device_mesh.devices.flatten())

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def make_strategy(name: str) -> tf.distribute.Strategy | LocalDevices:
    """`auto`: MirroredStrategy when more than one GPU is visible, else the default.

    On JAX or PyTorch, a `LocalDevices`; `auto` and `mirrored` on several JAX
    accelerators set `keras.distribution.DataParallel` over all of them.
    """
    if backend.name() != "tensorflow":
        return local_devices(name)
    if name == "auto":
        name = (
            "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise InputError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")


def local_devices(name: str) -> LocalDevices:
    """`make_strategy` on JAX and PyTorch: every local accelerator, or one device."""
    if name in ("multiworker", "tpu"):
        raise InputError(
            f"--strategy {name} is TensorFlow's (tf.distribute); with "
            f"KERAS_BACKEND={backend.name()} train on this machine's devices "
            "(--strategy auto), or unset KERAS_BACKEND."
        )
    if name not in STRATEGIES:
        raise InputError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    devices = keras.distribution.list_devices()
    several = backend.name() == "jax" and backend.has_accelerator() and len(devices) > 1
    if name in ("auto", "mirrored") and several:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices))
    return LocalDevices()


def strategy_of(model: keras.Model) -> tf.distribute.Strategy | LocalDevices:
    """The strategy `model` was built under (`LocalDevices` off TensorFlow)."""
    if backend.name() == "tensorflow":
        return model.distribute_strategy
    return LocalDevices()


def check_tf_config(tf_config: str | None) -> None:
    """Refuse a `TF_CONFIG` that TensorFlow would fail on deep inside its setup.

    Unset means one worker on this machine. Otherwise it is JSON such as
    `{"cluster": {"worker": ["host1:port", "host2:port"]},
    "task": {"type": "worker", "index": 0}}`, identical on every worker but for
    `index`.
    """
    if tf_config is None:
        return
    try:
        config = json.loads(tf_config)
        addresses = config["cluster"][config["task"]["type"]]
        index = config["task"]["index"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(
            f"TF_CONFIG={tf_config!r} is not valid ({error!r}): it needs "
            '"cluster" and "task" with "type" and "index"; see '
            "docs/several-machines.md."
        ) from None
    if not isinstance(index, int) or not 0 <= index < len(addresses):
        raise InputError(
            f"TF_CONFIG: task index {index!r} is not one of the "
            f"{len(addresses)} addresses listed for {config['task']['type']!r}."
        )


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for `--strategy multiworker`, which trains with `common.multiworker`."""
    if isinstance(strategy, LocalDevices):
        return False
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes the outputs (TensorFlow's convention).

    That is the task of type "chief" if the cluster has one, else worker 0;
    without TF_CONFIG, or with another strategy, the only process.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy: float16 on a TensorFlow GPU, else bfloat16.

    Each model's last layer has `dtype="float32"`, so logits, softmax and the
    loss stay float32; `compile` adds loss scaling for float16 by itself.
    JAX on a GPU takes bfloat16: the same speed on recent GPUs (H100, H200)
    and float32's range, so no loss scaling.
    """
    if not mixed:
        policy = "float32"
    elif backend.name() == "tensorflow" and tf.config.list_physical_devices("GPU"):
        policy = "mixed_float16"
    else:
        policy = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy
