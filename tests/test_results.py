"""common/results.py: the one results.json writer and reader, and resume messages."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pytest

from common import results
from common.errors import InputError
from common.voc import VOC_CLASSES


def test_scores_on_a_hand_computed_matrix():
    # Rows: truth, columns: prediction. IoU = diagonal / (row + column - diagonal).
    matrix = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    scores = results.scores(matrix, ["a", "b", "absent"])
    assert scores["per_class_iou"] == {"a": 3 / 5, "b": 2 / 4, "absent": None}
    assert scores["mean_iou"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    # Recall = diagonal / row; the class in no label is left out of the mean.
    assert scores["per_class_accuracy"] == {"a": 3 / 4, "b": 2 / 3, "absent": None}
    assert scores["class_average_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert scores["confusion_matrix"] == matrix.tolist()


def test_written_results_are_read_back_beside_the_model(tmp_path):
    written = {"mean_iou": 0.5, "dataset": {"class_names": ["x", "y"]}}
    results.write_results(str(tmp_path), written)
    run, path = results.read_run(str(tmp_path / "best.keras"))
    assert run == written and path == str(tmp_path / "results.json")


def test_no_results_is_none_and_a_broken_one_names_the_file(tmp_path):
    assert results.read_run(str(tmp_path / "best.keras"))[0] is None
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="results.json: cannot read it as JSON"):
        results.read_run(str(tmp_path / "best.keras"))


def test_class_names_come_from_the_run_then_candidates_then_voc(tmp_path):
    model = str(tmp_path / "best.keras")
    assert results.run_class_names(model, 21) == list(VOC_CLASSES)
    assert results.run_class_names(model, 2, ["p", "q"]) == ["p", "q"]
    assert results.run_class_names(model, 3) == ["class_0", "class_1", "class_2"]
    # Runs saved before the "dataset" entry: the per-class IoU keys.
    results.write_results(str(tmp_path), {"per_class_iou": {"u": 1.0, "v": 0.5}})
    assert results.run_class_names(model, 2, ["p", "q"]) == ["u", "v"]
    results.write_results(str(tmp_path), {"dataset": {"class_names": ["m", "n"]}})
    assert results.run_class_names(model, 2, ["p", "q"]) == ["m", "n"]


def run_args(tmp_path, argv) -> argparse.Namespace:
    return argparse.Namespace(
        argv=argv, output_dir=str(tmp_path / "run"), epochs=5, chief=True
    )


def test_resume_command_adds_the_run_folder_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["unet_train.py"])
    args = run_args(tmp_path, ["--epochs", "5"])
    folder = args.output_dir
    assert results.resume_command(args) == (
        f"python unet_train.py --epochs 5 --output-dir {folder}"
    )
    args.argv = ["--output-dir=x"]
    assert results.resume_command(args) == "python unet_train.py --output-dir=x"


def test_interruption_message_counts_the_finished_epochs(tmp_path):
    args = run_args(tmp_path, [])
    assert results.interruption_message(args) == (
        "Stopped by Ctrl-C before the first epoch finished: nothing is saved, so "
        "there is nothing to resume."
    )
    os.makedirs(args.output_dir)
    with open(os.path.join(args.output_dir, "history.csv"), "w") as f:
        f.write("epoch,loss,val_mean_iou\n0,1.0,0.25\n1,0.8,0.5\n")
    assert "2 of 5 epochs are finished" in results.interruption_message(args)
    assert results.best_val_mean_iou(args.output_dir) == 0.5
