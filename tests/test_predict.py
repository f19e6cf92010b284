"""predict.py: masks that decode back to the model's argmax; robust to bad input."""

import os

import cv2
import keras
import numpy as np
import tensorflow as tf

import predict
from common.voc import decode_mask


def saved_pointwise_model(path):
    rng = np.random.default_rng(0)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(21, 1, name="logits")(inputs))
    model.get_layer("logits").set_weights(
        [rng.normal(size=(1, 1, 3, 21)).astype(np.float32), np.zeros(21, np.float32)]
    )
    model.save(path)
    return model


def test_mask_png_decodes_to_the_argmax_of_the_logits(tmp_path):
    model = saved_pointwise_model(str(tmp_path / "m.keras"))
    rgb = np.random.default_rng(1).integers(0, 256, (37, 50, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    grey = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "grey.png"), grey)

    failures = predict.main(
        ["--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "out"),
         str(tmp_path / "photo.png"), str(tmp_path / "grey.png")]
    )  # fmt: skip

    assert failures == 0
    mask_path = str(tmp_path / "out" / "photo_mask.png")
    decoded = decode_mask(tf.io.read_file(mask_path), mask_path).numpy()
    expected = np.argmax(model.predict(rgb[None].astype(np.float32), verbose=0)[0], -1)
    np.testing.assert_array_equal(decoded, expected)
    overlay = cv2.imread(str(tmp_path / "out" / "photo_overlay.jpg"))
    assert overlay.shape == (37, 50 + predict.LEGEND_WIDTH, 3)  # image | legend
    assert cv2.imread(str(tmp_path / "out" / "grey_mask.png")).shape[:2] == (37, 50)


def test_unreadable_file_is_skipped_and_counted(tmp_path, capsys):
    saved_pointwise_model(str(tmp_path / "m.keras"))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((8, 8, 3), np.uint8))

    failures = predict.main(
        ["--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "out"),
         str(tmp_path / "broken.jpg"), str(tmp_path / "ok.png")]
    )  # fmt: skip

    assert failures == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert os.path.isfile(tmp_path / "out" / "ok_mask.png")


def test_video_gets_an_overlaid_video(tmp_path):
    saved_pointwise_model(str(tmp_path / "m.keras"))
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 32))
    for value in (0, 120, 240):
        writer.write(np.full((32, 40, 3), value, np.uint8))
    writer.release()

    failures = predict.main(
        ["--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "out"), video]
    )

    assert failures == 0
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames == 3
