"""Figures of masks: legends name exactly the classes shown, one column per model;
a run's picture covers every class and its worst images, each with its IoU."""

from __future__ import annotations

import argparse

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest

from common import plots, results, voc
from common.plots import (
    COLORMAP,
    choose_examples,
    colorize,
    compare_predictions,
    legend_handles,
)
from common.shapes import SHAPES_CLASSES


def test_legend_names_present_classes_and_void_in_their_colours():
    masks = [np.array([[0, 2], [255, 2]]), np.array([[5, 0]])]
    handles = legend_handles(masks, SHAPES_CLASSES)
    assert [h.get_label() for h in handles] == [
        "background",
        "square",
        "cross",
        "void (ignored)",
    ]
    np.testing.assert_allclose(handles[1].get_facecolor()[:3], COLORMAP[2] / 255)
    np.testing.assert_array_equal(colorize(masks[0])[1, 0], COLORMAP[255])


def test_compare_predictions_has_a_column_per_model_and_one_legend():
    images = [np.zeros((4, 5, 3), np.uint8)] * 2
    masks = [np.zeros((4, 5), np.uint8)] * 2
    predictions = {"FCN-32s": [np.ones((4, 5), np.uint8)] * 2, "FCN-8s": masks}
    figure = compare_predictions(images, masks, predictions, SHAPES_CLASSES, "t")
    axes = figure.axes
    assert len(axes) == 2 * 4
    assert [axis.get_title() for axis in axes[:4]] == [
        "image",
        "ground truth",
        "FCN-32s",
        "FCN-8s",
    ]
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["background", "circle"]
    plt.close(figure)


def test_compare_predictions_writes_each_row_s_title_beside_it():
    images = [np.zeros((4, 5, 3), np.uint8)] * 2
    masks = [np.zeros((4, 5), np.uint8)] * 2
    figure = compare_predictions(
        images, masks, {"prediction": masks}, SHAPES_CLASSES, row_titles=["a", "b"]
    )
    assert [axis.get_ylabel() for axis in figure.axes] == ["a", "", "", "b", "", ""]
    plt.close(figure)


def test_choice_covers_every_class_then_takes_the_worst():
    masks = [
        np.array([[0, 0]]),  # IoU 0.9: only background, already covered.
        np.array([[0, 1]]),  # 1.0: the first image with two new classes.
        np.array([[1, 255]]),  # 0.2, the worst: void is not a class to cover.
        np.array([[0, 2]]),  # 0.8: the only image with class 2.
        np.array([[255, 255]]),  # NaN: nothing scored, never "the worst".
        np.array([[0, 1]]),  # 0.5
    ]
    ious = [0.9, 1.0, 0.2, 0.8, np.nan, 0.5]
    assert choose_examples(masks, ious, 4) == [1, 3, 2, 5]
    assert choose_examples(masks, ious, 1) == [1]  # Too few slots to cover all.
    assert choose_examples(masks, ious, 0) == []
    assert choose_examples(masks, ious, 10) == [1, 3, 2, 5, 0, 4]


HISTORY = "epoch,loss,mean_iou,val_loss,val_mean_iou\n0,1.0,0.4,1.1,0.3\n"


def one_hot_image(labels: np.ndarray) -> np.ndarray:
    """An RGB image whose channel `k` is 255 where `labels` is `k` (classes 0-2)."""
    return (np.eye(3, dtype=np.uint8)[labels] * 255).astype(np.uint8)


def channel_model(margin: int) -> keras.Model:
    """Logits = the image's channels, cropped by `margin` like a valid U-Net."""
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Cropping2D(margin)(inputs))


@pytest.mark.parametrize("margin", [0, 2])
def test_plot_run_pictures_each_class_and_the_worst_with_its_iou(
    write_voc, tmp_path, monkeypatch, margin
):
    truth = {
        "all_right": np.zeros((6, 8), np.uint8),
        "class_1": np.pad(np.ones((3, 3), np.uint8), 2),  # (7, 7)
        "class_2_half": np.pad(np.full((4, 4), 2, np.uint8), ((1, 1), (1, 3))),
        "class_1_missed": np.pad(np.ones((3, 5), np.uint8), 1),  # (5, 7)
    }
    predicted = {name: mask.copy() for name, mask in truth.items()}
    predicted["class_2_half"] = np.where(
        np.arange(8) < 3, truth["class_2_half"], 0
    ).astype(np.uint8)  # Half the 2s become background: IoU (1 + 0.5) / 2 < 1.
    predicted["class_1_missed"] = np.zeros((5, 7), np.uint8)  # IoU 0.5 / 2.
    truth["class_1"][0, 0] = 255  # Void, in a corner: not scored.
    data_dir = write_voc(
        {"val": {name: (one_hot_image(predicted[name]), truth[name]) for name in truth}}
    )
    dataset = voc.DatasetSpec(data_dir, "voc", ("background", "one", "two"))
    val_ds = voc.make_dataset(
        data_dir, "val", 3, 32, False, num_classes=3, label_margin=margin
    )
    (tmp_path / "history.csv").write_text(HISTORY)
    args = argparse.Namespace(
        output_dir=str(tmp_path),
        num_predictions=3,
        dataset="toy",
        val_split="val",
        image_scale=1.0,
    )
    pictured = {}
    monkeypatch.setattr(
        plots,
        "plot_predictions",
        lambda *arrays, **kwargs: pictured.update(arrays=arrays, **kwargs),
    )

    results.plot_run(channel_model(margin), args, dataset, val_ds)

    images, masks, predictions = pictured["arrays"][:3]
    # Cover: class_1 (background and class 1), class_2_half (class 2); then the
    # worst of the rest, class_1_missed. All at their own size, padding gone.
    np.testing.assert_array_equal(masks[0], truth["class_1"])
    np.testing.assert_array_equal(masks[1], truth["class_2_half"])
    np.testing.assert_array_equal(masks[2], truth["class_1_missed"])
    np.testing.assert_array_equal(images[2], one_hot_image(predicted["class_1_missed"]))
    for prediction, name in zip(predictions, ["class_1", "class_2_half"]):
        np.testing.assert_array_equal(prediction, predicted[name])
    iou_2 = (32 / 40 + 8 / 16) / 2  # Background: 32 right of 40; class 2: 8 of 16.
    iou_missed = (20 / 35 + 0) / 2
    assert pictured["row_titles"] == [
        "class_1\nIoU 1.00",
        f"class_2_half\nIoU {iou_2:.2f}",
        f"class_1_missed\nIoU {iou_missed:.2f}",
    ]


def test_no_picture_for_zero_predictions(tmp_path):
    (tmp_path / "history.csv").write_text(HISTORY)
    args = argparse.Namespace(output_dir=str(tmp_path), num_predictions=0)
    results.plot_run(None, args, None, None)
    assert (tmp_path / "curves.png").is_file()
    assert not (tmp_path / "predictions.png").exists()
