"""A quiet start: import this before Keras or TensorFlow in an entry-point script.

    from common import console  # noqa: F401  (first: TensorFlow loads quietly)

TensorFlow's C++ runtime prints a dozen lines while it loads (CUDA stubs not
found, "failed call to cuInit" on a machine without a GPU, CPU instruction
notes). None of them is about the user's run, and they push the first real
line off the screen. Unless the user has set `TF_CPP_MIN_LOG_LEVEL` (then
their choice stands and nothing is hidden), this module sets it to 3 (errors
reach Python as exceptions anyway) and loads TensorFlow with its stderr
captured: the capture is printed only if the import fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide what C++ libraries write to stderr (file descriptor 2) in this block.

    What was written is shown after all if the block fails. Python's own
    `sys.stderr` goes to the same descriptor, so keep the block short.
    """
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            log.seek(0)
            os.write(saved_stderr, log.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)


@contextlib.contextmanager
def quiet_tensorflow_start() -> Iterator[None]:
    """Load TensorFlow in this block without its C++ start-up lines.

    Does nothing when the user has set `TF_CPP_MIN_LOG_LEVEL` (their choice
    stands) or TensorFlow is already loaded.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with quiet_stderr():  # The loader's messages are written to fd 2.
        yield


def configured_backend() -> str:
    """The Keras backend this process will use, read as Keras reads it.

    `KERAS_BACKEND` first, then `backend` in `$KERAS_HOME/keras.json`
    (default `~/.keras/keras.json`), then TensorFlow, Keras' default. Read
    without importing Keras, which would load the backend loudly.
    """
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as config:
            return json.load(config).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def _import_tensorflow_quietly() -> None:
    """On the TensorFlow backend Keras imports TensorFlow at once: quietly, here.

    Other backends load it later, and only if something needs it
    (`common.backend.tf`).
    """
    if configured_backend() != "tensorflow":
        return
    with quiet_tensorflow_start():
        import tensorflow  # noqa: F401


def progress_verbosity() -> int:
    """Keras `verbose`: a progress bar on a terminal, one line per epoch in a log.

    A progress bar redraws itself with carriage returns; written to a file it
    becomes one line of thousands of characters per epoch.
    """
    return 1 if sys.stdout.isatty() else 2


_import_tensorflow_quietly()
