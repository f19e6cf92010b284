"""`shapes` is an honest task: colour finds the objects, only shape names them."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from common import shapes, voc
from common.constants import IGNORE_LABEL
from common.losses import segmentation_loss
from common.metrics import ConfusionMatrix, per_class_iou


def per_pixel_model(num_classes: int) -> keras.Model:
    """1x1 convolutions only: each pixel is classified from its own colour."""
    inputs = keras.Input((None, None, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(32, 1, activation="relu")(x)
    x = layers.Conv2D(32, 1, activation="relu")(x)
    return keras.Model(inputs, layers.Conv2D(num_classes, 1)(x))


def test_examples_are_labelled_objects_on_a_grey_background():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, label = shapes.make_example(rng)
        assert image.shape[:2] == label.shape and image.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5, IGNORE_LABEL}
        assert (label > 0).any() and (label == IGNORE_LABEL).any()
        saturation = image.max(-1).astype(int) - image.min(-1)
        objects = (label > 0) & (label != IGNORE_LABEL)
        assert np.median(saturation[objects]) > 2 * np.median(saturation[label == 0])


def test_a_per_pixel_model_finds_objects_but_cannot_name_them(tmp_path):
    data_dir = shapes.generate_shapes(str(tmp_path), num_train=96, num_val=32)
    options = dict(layout="voc", num_classes=6)
    train = voc.make_dataset(data_dir, "train", 8, 64, True, **options)
    val = voc.make_dataset(data_dir, "val", 16, 0, False, **options)
    model = per_pixel_model(6)
    metric = ConfusionMatrix(6)
    model.compile(keras.optimizers.Adam(0.01), segmentation_loss(), metrics=[metric])
    model.fit(train, epochs=1, steps_per_epoch=150, shuffle=False, verbose=0)
    model.evaluate(val, verbose=0)
    ious = per_class_iou(metric.matrix)

    assert ious[0] > 0.9, ious  # Background: grey; objects: saturated colours.
    assert np.nanmean(ious) < 0.35, ious  # Which object it is takes its shape.
