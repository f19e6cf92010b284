"""Which Keras backend runs this process, and TensorFlow only where it is needed.

Keras 3 runs the same model on TensorFlow, JAX or PyTorch (`KERAS_BACKEND`).
The models, layers, losses and metrics here speak `keras.ops`, so they run on
any of them; what only TensorFlow can do (the `tf.data` reader,
`tf.distribute`, TensorBoard's summaries, export) uses `tf` from this module:

    from common.backend import tf

It is TensorFlow itself, imported (quietly, `common.console`) the first time
an attribute is read. So `import unet_train` works on a machine with only
`keras` and `jax` installed. When TensorFlow loads under another backend it
is kept off the GPUs, which belong to JAX or PyTorch; Keras itself imports
TensorFlow wherever it is installed when it saves a model or writes
TensorBoard logs, so a training run loads it through here first
(`load_tensorflow_off_the_gpus`). Where TensorFlow is not installed, the
first use raises `TensorFlowMissing` naming what needed it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

import keras  # noqa: E402  (after console: TensorFlow loads quietly)

from common import console


class TensorFlowMissing(ModuleNotFoundError):
    """TensorFlow is needed for this step and is not installed."""


def name() -> str:
    """The Keras backend of this process: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


class _LazyTensorFlow:
    """`tensorflow`, imported when an attribute is first read."""

    def __getattr__(self, attribute: str):
        return getattr(_import_tensorflow(attribute), attribute)

    def __repr__(self) -> str:
        loaded = "loaded" if "tensorflow" in sys.modules else "not loaded yet"
        return f"<TensorFlow, imported on first use ({loaded})>"


def _import_tensorflow(attribute: str):
    if sys.modules.get("tensorflow") is not None:
        return sys.modules["tensorflow"]
    try:
        with console.quiet_tensorflow_start():
            module = importlib.import_module("tensorflow")
    except ImportError as error:  # Not installed, or hidden (None in sys.modules).
        if error.name != "tensorflow":
            raise
        raise TensorFlowMissing(
            f"TensorFlow is not installed, and tf.{attribute} needs it (the tf.data "
            "pipeline, tf.distribute, TensorBoard, export): pip install -r "
            "requirements.txt, or train from a dataset cache (docs/gpu.md)."
        ) from error
    if name() != "tensorflow":
        # The GPUs belong to the backend that trains; tf.data runs on the CPU.
        module.config.set_visible_devices([], "GPU")
    return module


tf = _LazyTensorFlow()


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # Hidden from this process, as tests do.
        return False


def load_tensorflow_off_the_gpus() -> None:
    """On JAX or PyTorch, import an installed TensorFlow now, with no GPU.

    Keras imports TensorFlow by itself wherever it is installed (saving a
    model checks for it, TensorBoard writes with it); imported that way it
    would take the GPUs' memory from the backend that trains.
    """
    if name() != "tensorflow" and tensorflow_installed():
        _import_tensorflow("config")


def is_data_error(error: BaseException) -> bool:
    """Whether `error` is TensorFlow's for a file the `tf.data` reader could not read.

    False where TensorFlow was never loaded: then no pipeline of its ran.
    """
    if sys.modules.get("tensorflow") is None:
        return False
    return isinstance(error, tf.errors.InvalidArgumentError)


def has_accelerator() -> bool:
    """Whether this backend computes on a GPU or TPU rather than the CPU."""
    if name() == "tensorflow":
        return bool(
            tf.config.list_logical_devices("GPU")
            or tf.config.list_logical_devices("TPU")
        )
    if name() == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    if name() == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def compiled(function: Callable) -> Callable:
    """`function` compiled as one program where that pays off: `jax.jit` on JAX.

    Eager JAX dispatches every op on its own: the cache's augmentation (about
    50 ops a batch) cost 4.7 ms of host time a batch eagerly and 0.2 ms
    compiled (batch 2 at 32 px, 2-core AMD EPYC), time the accelerator may
    spend waiting. `function` must take arrays only; bind the rest first
    (`functools.partial`). Elsewhere it is returned as it is.
    """
    if name() == "jax":
        import jax

        return jax.jit(function)
    return function
