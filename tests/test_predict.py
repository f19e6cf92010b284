"""predict.py: masks that decode back to the model's argmax; robust to bad input."""

import os

import cv2
import keras
import numpy as np
import tensorflow as tf

import predict
from common import plots
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
    assert cv2.imread(str(tmp_path / "out" / "grey_mask.png")).shape[:2] == (37, 50)


def test_every_written_file_is_named(tmp_path, capsys):
    saved_pointwise_model(str(tmp_path / "m.keras"))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))

    predict.main(
        ["--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "out"),
         str(tmp_path / "a.png")]
    )  # fmt: skip

    printed = capsys.readouterr().out
    for name in ("a_mask.png", "a_overlay.jpg"):
        assert str(tmp_path / "out" / name) in printed
        assert os.path.isfile(tmp_path / "out" / name)


def test_many_inputs_get_one_summary_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict, "MAX_LISTED", 2)
    saved_pointwise_model(str(tmp_path / "m.keras"))
    for name in ("a", "b", "c"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.zeros((8, 8, 3), np.uint8))

    predict.main(["--model", str(tmp_path / "m.keras"), "--out",
                  str(tmp_path / "out"), str(tmp_path)])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"Wrote 6 files for 3 inputs to {tmp_path / 'out'} "
                     "(NAME_mask.png and NAME_overlay.jpg per image, "
                     "NAME_overlay.mp4 per video)"]  # fmt: skip


def test_small_overlay_is_scaled_up_with_the_legend_below_no_wider():
    rgb = np.full((64, 48, 3), 90, np.uint8)  # The demo's size, or smaller.
    labels = np.zeros((64, 48), np.uint8)
    labels[10:40, 10:30] = 1
    names = ["background", "aeroplane", "a class name far too long to fit in 256 px"]

    canvas = predict.overlay(rgb, labels, names, 0.4, np.arange(3))

    # Short side 48 -> 288 (factor 6), and not one column wider for the legend.
    assert canvas.shape[1] == 288 and canvas.shape[0] > 384
    image_part, legend = canvas[:384], canvas[384:]
    assert (image_part[0, 0] == 90).all()  # Background stays the photo.
    # Each labelled pixel is now a 6x6 block; its border is white, just inside
    # it a band of the class's own colour, and the middle a tint.
    assert (image_part[60, 100] == 255).all()
    np.testing.assert_array_equal(image_part[63, 100], plots.COLORMAP[1])
    tint = image_part[150, 120]
    assert not (tint == 90).all() and not (tint == plots.COLORMAP[1]).all()
    # The legend stays inside the image's width: the long name is cut short.
    inked = np.flatnonzero(legend.any(axis=(0, 2)))
    assert inked.size > 150 and inked[-1] < legend.shape[1] - 1


def test_overlay_size_depends_on_the_image_and_legend_only():
    names = [f"class {index}" for index in range(21)]
    big = predict.overlay(
        np.zeros((600, 900, 3), np.uint8), np.zeros((600, 900), np.uint8), names, 0.4
    )
    # Big enough already: the image keeps its size, the legend adds rows below.
    assert big.shape[1] == 900 and big.shape[0] > 600 and (big[:600] == 0).all()
    # A video's frames list every class, so all have one size whatever they show.
    every_class = np.arange(21)
    frames = [
        predict.overlay(
            np.zeros((32, 40, 3), np.uint8), labels, names, 0.4, every_class
        )
        for labels in (np.zeros((32, 40), np.uint8), np.full((32, 40), 7, np.uint8))
    ]
    assert frames[0].shape == frames[1].shape and frames[0].shape[1] == 320


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


def test_a_run_trained_at_an_image_scale_predicts_at_that_scale(tmp_path, monkeypatch):
    saved_pointwise_model(str(tmp_path / "m.keras"))
    (tmp_path / "results.json").write_text('{"settings": {"image_scale": 0.5}}')
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8))
    seen = []
    original = predict.inference.predict_multiscale

    def recording(model, image, scales, *args):
        seen.append(scales)
        return original(model, image, scales, *args)

    monkeypatch.setattr(predict.inference, "predict_multiscale", recording)
    argv = ["--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "out")]

    predict.main([*argv, str(tmp_path / "a.png")])
    predict.main([*argv, "--scales", "1,2", str(tmp_path / "a.png")])

    assert seen == [(0.5,), (1.0, 2.0)]
    mask = cv2.imread(str(tmp_path / "out" / "a_mask.png"))
    assert mask.shape[:2] == (20, 30)  # Upsampled back to the full image.
