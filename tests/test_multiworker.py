"""--strategy multiworker: two local workers train like one device, and resume.

The workers are real processes on 127.0.0.1 running `unet_train.main`, each
under a timeout and killed at the end whatever happens.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import unet_train
from common import distribute, multiworker, stops
from common.errors import InputError
from common.layers import synchronize_batch_norm
from common.losses import segmentation_loss
from unet_train import build_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT_S = 180  # Each worker needs ~30 s of CPU; the machine is shared.

# One worker: the real script, started as `python unet_train.py ARGV` starts
# it, plus two test hooks. It saves its final weights to WEIGHTS, and with
# DIE=1 it exits right after its first checkpoint save, as a worker that
# crashes at the end of epoch 1.
WORKER = textwrap.dedent(
    """
    import os, sys
    from common import console  # First, as in the scripts: TensorFlow loads quietly.
    import numpy as np
    import tensorflow as tf
    import unet_train
    from common import cli, multiworker

    weights_path, die, *argv = sys.argv[1:]
    sys.argv = ["unet_train.py", *argv]
    fit = multiworker.fit

    def fit_and_save_weights(model, *args, **kwargs):
        history = fit(model, *args, **kwargs)
        np.savez(weights_path, *model.get_weights())
        return history

    multiworker.fit = fit_and_save_weights
    if die == "1":
        save = tf.train.CheckpointManager.save

        def save_and_die(self, *args, **kwargs):
            save(self, *args, **kwargs)
            os._exit(3)

        tf.train.CheckpointManager.save = save_and_die
    cli.run_cli(unet_train.main)
    """
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(argv, output_dirs, weights_paths, die=(False, False)):
    """Start a two-worker cluster on fresh loopback ports; worker i gets die[i]."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        # As a user runs it: without TF_CPP_MIN_LOG_LEVEL (CI sets it), so
        # common/console.py quiets TensorFlow's C++ log as it does for them.
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        command = [
            sys.executable,
            "-c",
            WORKER,
            str(weights_paths[index]),
            "1" if die[index] else "0",
            *argv,
            "--strategy",
            "multiworker",
            "--output-dir",
            str(output_dirs[index]),
        ]
        processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=WORKER_TIMEOUT_S)
    return process.returncode, output


def kill(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def history_rows(output_dir) -> list[dict]:
    path = os.path.join(output_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def wait_for_history_rows(output_dir, count: int, process) -> None:
    """Wait until the chief has written `count` epochs to history.csv."""
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while len(history_rows(output_dir)) < count:
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"chief wrote no epoch {count}:\n{finish(process)[1]}")
        time.sleep(0.5)


def assert_one_line_naming_the_lost_worker(log: str, chief_dir) -> None:
    """The survivor's last line names the lost worker and resumes both (#39);
    no traceback and none of gRPC's or the collectives' C++ lines before it."""
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: Lost worker 1 of the cluster, so worker 0 "), log
    assert last.count("TF_CONFIG=") == 2 and last.count("python unet_train.py") == 2
    assert last.endswith(f"--output-dir {chief_dir}")
    noise = ("Traceback", "Socket closed", "UNAVAILABLE", "CollectiveReduce", "E0000")
    assert not [line for line in log.splitlines() if any(n in line for n in noise)]


def keras_weights(path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


@pytest.fixture()
def tiny_unet_argv(shapes_dir) -> list[str]:
    """2 steps of 4 images (2 per worker), constant learning rate, BN on."""
    return [
        *("--dataset", "shapes", "--data-dir", shapes_dir),
        *("--filters", "4", "8", "--crop-size", "32"),
        *("--steps-per-epoch", "2", "--val-steps", "1", "--num-predictions", "1"),
        *("--optimizer", "sgd", "--lr-schedule", "constant"),
    ]


def test_two_workers_match_one_device_and_resume(tiny_unet_argv, tmp_path, monkeypatch):
    """Epoch 1 of a 2x2-image cluster equals one device on 4 images; worker 1
    then dies, the pair is restarted and finishes epoch 2 from the checkpoint."""
    chief_dir, other_dir = tmp_path / "chief", tmp_path / "other"
    weights = [tmp_path / "weights0.npz", tmp_path / "weights1.npz"]
    argv = [*tiny_unet_argv, "--batch-size", "2", "--learning-rate", "0.05"]
    workers = start_workers(
        [*argv, "--epochs", "2"], (chief_dir, other_dir), weights, die=(False, True)
    )
    try:
        code, log = finish(workers[1])
        assert code == 3, log[-3000:]  # Died after saving epoch 1.
        wait_for_history_rows(chief_dir, 1, workers[0])
        started = time.monotonic()
        code, log = finish(workers[0])  # Its next collective fails.
        seconds = time.monotonic() - started
        assert code == 1, log[-3000:]
        assert_one_line_naming_the_lost_worker(log, chief_dir)
        assert seconds < 60, seconds  # 1.3-10.5 s measured (AMD EPYC, 2 cores).
        epoch1_best = keras_weights(chief_dir / "best.keras")
        epoch1_history = history_rows(chief_dir)[0]

        workers = start_workers(
            [*argv, "--epochs", "2"], (chief_dir, other_dir), weights
        )
        (chief_code, chief_log), (other_code, other_log) = map(finish, workers)
    finally:
        kill(workers)
    assert chief_code == 0, chief_log[-3000:]
    assert other_code == 0, other_log[-3000:]

    # One device, global batch 4 (the learning rate is scaled by 2 workers).
    # Its BN is marked synchronized too: Keras then computes the batch variance
    # as E[x^2] - E[x]^2, as the workers do, instead of in two passes; in
    # float32 the two differ by up to 5e-5 in these weights after 2 steps.
    def build_synchronized_unet(*args, **kwargs):
        model = build_unet(*args, **kwargs)
        synchronize_batch_norm(model)
        return model

    monkeypatch.setattr(unet_train, "build_unet", build_synchronized_unet)
    reference = unet_train.main(
        [
            *tiny_unet_argv,
            *("--batch-size", "4", "--learning-rate", "0.1", "--epochs", "1"),
            *("--strategy", "default", "--output-dir", str(tmp_path / "one")),
        ]
    )
    reference_history = history_rows(tmp_path / "one")[0]
    for key in ("loss", "val_loss", "mean_iou", "val_mean_iou"):
        np.testing.assert_allclose(
            float(epoch1_history[key]), float(reference_history[key]), atol=1e-5
        )
    reference_weights = keras_weights(tmp_path / "one" / "best.keras")
    for multiworker_weight, one_device_weight in zip(epoch1_best, reference_weights):
        np.testing.assert_allclose(multiworker_weight, one_device_weight, atol=1e-5)
    for multiworker_weight, one_device_weight in zip(epoch1_best, reference_weights):
        np.testing.assert_allclose(multiworker_weight, one_device_weight, atol=1e-5)

    # The restart resumed after epoch 1 and ends with one set of weights.
    assert "Resuming after epoch 1" in chief_log and "Resuming" in other_log
    assert [row["epoch"] for row in history_rows(chief_dir)] == ["0", "1"]
    results = json.loads((chief_dir / "results.json").read_text())
    assert results["epochs_this_run"] == 1 and results["optimizer_steps"] == 4
    assert reference["optimizer_steps"] == 2
    final0, final1 = (np.load(path) for path in weights)
    for name in final0.files:
        np.testing.assert_array_equal(final0[name], final1[name])
    # The chief alone writes outputs (the other worker makes no folder); its
    # finished run leaves no backup.
    assert not other_dir.exists()
    assert {"best.keras", "curves.png", "predictions.png", "tensorboard"} <= set(
        os.listdir(chief_dir)
    )
    assert not (chief_dir / "backup").exists()


def test_sigterm_to_every_worker_ends_each_in_one_line(
    tiny_unet_argv, tmp_path, communicate_or_dump_stacks
):
    """What Slurm or Kubernetes do to a job: SIGTERM to every worker at once,
    here in epoch 2 (#39). Each exits 130 with its line: the chief says what
    is saved and how to resume, the other that it writes nothing. Measured
    (AMD EPYC, 2 cores, 20 tries): 18 pairs ended within 1.0-2.0 s, 2 at the
    chief's deadline (`stops.GRACE_S`) after TensorFlow took that long to
    notice that the other worker had gone."""
    chief_dir, other_dir = tmp_path / "chief", tmp_path / "other"
    weights = [tmp_path / "weights0.npz", tmp_path / "weights1.npz"]
    argv = [*tiny_unet_argv, "--batch-size", "2", "--epochs", "1000"]
    workers = start_workers(argv, (chief_dir, other_dir), weights)
    try:
        wait_for_history_rows(chief_dir, 1, workers[0])
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        logs = [communicate_or_dump_stacks(worker, 30)[0] for worker in workers]
    finally:
        kill(workers)
    for worker, log in zip(workers, logs):
        assert worker.returncode == stops.EXIT_STATUS, log[-3000:]
        assert "Traceback" not in log and "E0000" not in log, log[-3000:]
    chief_line, other_line = (log.strip().splitlines()[-1] for log in logs)
    assert chief_line.startswith("Stopped by SIGTERM: ") and (
        "epochs are finished and saved. To resume: python unet_train.py" in chief_line
    ), logs[0][-3000:]
    assert other_line.startswith("Stopped by SIGTERM: this worker writes nothing")
    assert (chief_dir / "backup").is_dir() and not other_dir.exists()


def test_loop_step_matches_fit_with_pixel_weights():
    """One step of the loop's train_step equals one step of `fit` on a batch of
    (images, masks, pixel weights): the same weighted loss over non-void pixels."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 32, 32)).astype("int32")
    masks[:, :5] = 255
    weights = np.where(masks == 255, 0, rng.uniform(0.5, 3, masks.shape))
    data = tf.data.Dataset.from_tensors((images, masks, weights.astype("float32")))

    def compiled_unet():
        keras.utils.set_random_seed(3)
        model = build_unet(3, filters=(4, 8))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=segmentation_loss())
        return model

    loop_model, fit_model = compiled_unet(), compiled_unet()
    train_step, _ = multiworker.make_step_functions(loop_model, 3)
    loss, counts = train_step(iter(data))
    fit_loss = fit_model.fit(data, epochs=1, verbose=0).history["loss"][0]

    np.testing.assert_allclose(float(loss), fit_loss, rtol=1e-6)
    assert counts.numpy().sum() == np.sum(masks != 255)
    for loop_weight, fit_weight in zip(loop_model.weights, fit_model.weights):
        np.testing.assert_allclose(loop_weight.numpy(), fit_weight.numpy(), atol=1e-6)
    # The pixel weights matter: without them, the first loss would differ.
    unweighted = segmentation_loss()(masks, compiled_unet()(images, training=True))
    assert not np.isclose(float(unweighted), fit_loss, rtol=1e-3)


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{not json", "is not valid"),
        ('{"cluster": {"worker": ["a:1"]}}', "is not valid"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            "task index 1",
        ),
    ],
)
def test_bad_tf_config_is_one_clear_error(tf_config, message):
    with pytest.raises(InputError, match=message):
        distribute.check_tf_config(tf_config)
