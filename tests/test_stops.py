"""Ctrl-C and SIGTERM stop a run within seconds, in one line, in every phase.

Each phase is a real `unet_train.py` process that signals itself at a chosen
moment (`RUN`, below), so the moment is exact even on a loaded machine: while
it imports Keras, inside a garbage-collector callback during the first epoch
(where Python drops the `KeyboardInterrupt`), inside a call that fails with
an error of its own when the handler cuts it short, during validation, as a
checkpoint is written, and in the final evaluation; each with SIGINT and
with SIGTERM. A run that does not stop in time fails with every thread's
stack (SIGUSR1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from common import multiworker, stops
from common.errors import StopRequested

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESS_TIMEOUT_S = 240  # Start-up alone can take 30 s on a loaded machine.
STOP_LIMIT_S = stops.GRACE_S + 7  # Signal to exit, a busy machine's slack included.

# The script as `python unet_train.py` runs it, plus a hook that sends SIGNAL
# to the process itself at PHASE and writes the time to SENT (a file).
RUN = textwrap.dedent(
    """
    import gc, importlib.abc, os, runpy, sys, time

    phase, signum, sent_path, *argv = sys.argv[1:]

    def send(*args):
        if not os.path.exists(sent_path):  # Once.
            with open(sent_path, "w") as sent:
                sent.write(repr(time.time()))
            os.kill(os.getpid(), int(signum))

    class SendOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "keras":
                send()

    def send_in_gc_callback():  # Python drops what a gc callback raises.
        gc.callbacks.append(send)
        gc.collect()
        gc.callbacks.remove(send)

    def before(owner, name, when):
        original = getattr(owner, name)

        def hooked(self, *args, **kwargs):
            if when(self, *args):
                send()
            return original(self, *args, **kwargs)

        setattr(owner, name, hooked)

    if phase == "import":
        sys.meta_path.insert(0, SendOnImport())
    else:
        import keras
        callbacks = keras.callbacks
    if phase == "gc":
        def on_batch(self, batch, logs=None):
            if batch == 1:
                send_in_gc_callback()
        callbacks.Callback.on_train_batch_begin = on_batch
    if phase == "cut":  # A C++ call that the handler cuts short fails its own way.
        def on_batch(self, batch, logs=None):
            if batch == 1:
                try:
                    send()
                except KeyboardInterrupt:
                    raise RuntimeError("pybind11::error_already_set: MISMATCH")
        callbacks.Callback.on_train_batch_begin = on_batch
    if phase == "validation":
        before(callbacks.Callback, "on_test_batch_begin", lambda *args: True)
    if phase == "checkpoint":  # Before epoch 2's backup is written.
        before(callbacks.BackupAndRestore, "_save_model",
               lambda self: self._current_epoch == 2)
    if phase == "final":  # After fit, as the best model is scored.
        from common import training
        before(training, "save_results", lambda *args: True)
    sys.argv = ["unet_train.py", *argv]
    sys.path.insert(0, os.getcwd())
    runpy.run_path("unet_train.py", run_name="__main__")
    """
)


def stop_run(shapes_dir, tmp_path, phase: str, signum: int, epochs: int, communicate):
    """Run unet_train.py until it signals itself at `phase`; return what it left."""
    output_dir, sent = tmp_path / "run", tmp_path / "sent"
    # fmt: off
    argv = [
        "--dataset", "shapes", "--data-dir", shapes_dir, "--filters", "4", "8",
        "--crop-size", "32", "--batch-size", "2", "--epochs", str(epochs),
        "--steps-per-epoch", "2", "--val-steps", "1", "--num-predictions", "0",
        "--output-dir", str(output_dir),
    ]
    # fmt: on
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, phase, str(int(signum)), str(sent), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = communicate(process, PROCESS_TIMEOUT_S)
    finally:
        process.kill()
    ended = time.time()
    assert sent.exists(), f"{phase}: no signal sent\n{stderr[-3000:]}"
    return process.returncode, ended - float(sent.read_text()), stderr, output_dir


CAUSE = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


PHASES = {  # phase: (epochs, what the line says is saved)
    "import": (2, "while starting: nothing is saved"),
    "gc": (1000, "before the first epoch finished"),
    "cut": (1000, "before the first epoch finished"),
    "validation": (2, "before the first epoch finished"),
    "checkpoint": (3, "2 of 3 epochs are finished and saved"),
    "final": (2, "in the final evaluation: all 2 epochs"),
}


@pytest.mark.parametrize("signum", list(CAUSE), ids=lambda signum: signum.name)
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_stop_in_any_phase_exits_130_in_one_line(
    phase, signum, shapes_dir, tmp_path, communicate_or_dump_stacks
):
    epochs, says = PHASES[phase]
    code, seconds, stderr, output_dir = stop_run(
        shapes_dir, tmp_path, phase, signum, epochs, communicate_or_dump_stacks
    )
    assert code == stops.EXIT_STATUS, stderr[-3000:]
    assert seconds < STOP_LIMIT_S
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    lines = [line for line in stderr.splitlines() if "Stopped by" in line]
    assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr[-3000:]
    assert lines[0].startswith(f"Stopped by {CAUSE[signum]}") and says in lines[0]
    if phase == "checkpoint":  # Epoch 2's save, begun, is finished first.
        assert "To resume: python unet_train.py --dataset shapes" in lines[0]
        metadata = output_dir / "backup" / "training_metadata.json"
        assert json.loads(metadata.read_text())["epoch"] == 2
    if phase == "final":  # Nothing to resume: the backup is gone, best.keras kept.
        assert "To score best.keras: python evaluate.py --model" in lines[0]
        assert (output_dir / "best.keras").exists()
        assert not (output_dir / "backup").exists()


def test_a_stop_waits_for_a_deferred_block_then_is_raised():
    finished = []
    with pytest.raises(StopRequested) as stop:
        with stops.handled(lambda cause: f"Stopped by {cause}"):
            with stops.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(2 * stops.RETRY_S)  # The watchdog retries meanwhile.
                finished.append("written")
    assert finished == ["written"]
    assert stops.message(stop.value) == "Stopped by Ctrl-C"


TF_CONFIG = json.dumps(
    {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 0},
    }
)
# The survivor's error when worker 1 was killed during epoch 2 (abridged).
SOCKET_CLOSED = (
    "Collective ops is aborted by: Socket closed\nAdditional GRPC error "
    "information from remote target /job:worker/replica:0/task:1 ... "
    "[[{{node CollectiveReduceV2}}]] on /job:worker/replica:0/task:0/device:CPU:0"
)


def test_lost_worker_message_names_it_and_resumes_every_worker():
    command = "python unet_train.py --strategy multiworker --output-dir runs/a"
    message = multiworker.lost_worker_message(SOCKET_CLOSED, TF_CONFIG, command)
    assert "\n" not in message
    assert message.startswith("Lost worker 1 of the cluster, so worker 0 stopped")
    _, commands = message.split("To resume, run on each worker: ")
    for index, resume in enumerate(commands.split(" ; ")):
        assert resume.endswith(command)
        config = json.loads(resume.split("'")[1])  # TF_CONFIG='...' (shlex).
        assert config["task"] == {"type": "worker", "index": index}
        assert config["cluster"] == json.loads(TF_CONFIG)["cluster"]


def test_lost_worker_message_without_a_named_peer():
    message = multiworker.lost_worker_message("Socket closed", TF_CONFIG, "python x")
    assert message.startswith("Lost another worker of the cluster")
