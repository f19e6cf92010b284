"""evaluate.py against a confusion matrix computed independently in numpy."""

import csv
import json

import keras
import numpy as np
import pytest

import evaluate
from common import cli, inference, shapes
from common.constants import IGNORE_LABEL
from common.errors import InputError
from common.metrics import label_boundaries, trimap_mask
from common.voc import VOC_CLASSES

NUM_CLASSES = 21


def pointwise_model(seed=0):
    """A 1x1-conv 'segmenter': its prediction for a pixel depends on that pixel only,
    so the expected labels can be computed in numpy."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(NUM_CLASSES, 1, name="logits")(inputs)
    model = keras.Model(inputs, logits, name="pointwise")
    kernel = rng.normal(size=(1, 1, 3, NUM_CLASSES)).astype(np.float32)
    model.get_layer("logits").set_weights([kernel, np.zeros(NUM_CLASSES, np.float32)])
    return model, kernel[0, 0]


@pytest.fixture()
def tiny_voc(write_voc):
    rng = np.random.default_rng(1)
    examples = {}
    for i, (height, width) in enumerate([(20, 30), (33, 17), (25, 25)]):
        mask = rng.choice(
            np.array([0, 1, 5, 20, IGNORE_LABEL], np.uint8), (height, width)
        )
        examples[f"im{i}"] = (rng.integers(0, 256, (height, width, 3), np.uint8), mask)
    return write_voc({"val": examples}), examples


def numpy_confusion(examples, kernel):
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for image, mask in examples.values():
        predicted = np.argmax(image.astype(np.float32) @ kernel, axis=-1)
        scored = mask != IGNORE_LABEL
        np.add.at(matrix, (mask[scored], predicted[scored]), 1)
    return matrix


def test_eval_json_matches_numpy(tiny_voc, tmp_path):
    data_dir, examples = tiny_voc
    model, kernel = pointwise_model()
    model.save(tmp_path / "model.keras")

    results = evaluate.main(
        ["--model", str(tmp_path / "model.keras"), "--data-dir", data_dir]
    )

    expected = numpy_confusion(examples, kernel)
    np.testing.assert_array_equal(results["confusion_matrix"], expected)
    with open(tmp_path / "eval.json") as f:
        assert json.load(f)["confusion_matrix"] == expected.tolist()
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert results["pixel_accuracy"] == pytest.approx(
        np.trace(expected) / expected.sum()
    )


def test_single_scale_tta_and_flip_equal_plain_evaluation(tiny_voc):
    data_dir, examples = tiny_voc
    model, kernel = pointwise_model(seed=2)
    args = evaluate.make_parser().parse_args(
        ["--model", "x", "--dataset", "voc", "--data-dir", data_dir]
    )
    dataset = cli.resolve_dataset(args)

    plain = evaluate.confusion_plain(model, dataset, "val", batch_size=2)
    tta = evaluate.confusion_per_image(model, dataset, "val", (1.0,), flip=False)
    # A pointwise model is mirror-symmetric, so flip-and-unflip must change nothing.
    flipped = evaluate.confusion_per_image(model, dataset, "val", (1.0,), flip=True)
    tta, flipped = tta["network", None], flipped["network", None]

    np.testing.assert_array_equal(plain, numpy_confusion(examples, kernel))
    np.testing.assert_array_equal(tta, plain)
    np.testing.assert_array_equal(flipped, plain)


def test_multiscale_returns_probabilities_at_the_original_size():
    model, _ = pointwise_model()
    image = np.random.default_rng(0).uniform(0, 255, (37, 45, 3)).astype(np.float32)
    probabilities = inference.predict_multiscale(model, image, (0.5, 1.0, 1.75), True)
    assert probabilities.shape == (37, 45, NUM_CLASSES)
    np.testing.assert_allclose(np.sum(probabilities, -1), 1.0, rtol=1e-5)


def test_bad_scales_are_a_clear_error():
    with pytest.raises(InputError, match="--scales"):
        inference.parse_scales("0.5,big")


def tiny_models():
    from fcn_train import build_fcn
    from segnet_train import build_segnet
    from unet_train import build_unet

    yield build_fcn(6, "8s", width=1 / 16)
    yield build_segnet(6, variant="basic")
    yield build_unet(6, filters=(4, 8, 16, 32))


def test_every_script_s_saved_model_loads_for_evaluation(tmp_path):
    for model in tiny_models():
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        reloaded = inference.load_model(path)
        inference.check_same_size_output(reloaded)
        image = np.random.default_rng(0).uniform(0, 255, (45, 61, 3))
        probabilities = inference.predict_probabilities(reloaded, image)
        assert probabilities.shape == (45, 61, 6), model.name


def test_valid_padding_unet_is_refused_with_a_pointer_to_its_results():
    from unet_train import build_unet

    model = build_unet(3, padding="valid", filters=(4, 8, 16, 32))
    with pytest.raises(InputError, match="results.json"):
        inference.check_same_size_output(model)


def test_trimap_mask_keeps_exactly_the_pixels_near_a_boundary():
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 12:30] = 3
    boundary = np.argwhere(label_boundaries(mask))
    rows, columns = np.indices(mask.shape)
    # Brute force: Euclidean distance from every pixel to every boundary pixel.
    distance = np.sqrt(
        (rows[..., None] - boundary[:, 0]) ** 2
        + (columns[..., None] - boundary[:, 1]) ** 2
    ).min(axis=-1)

    band = trimap_mask(mask, 3)

    np.testing.assert_array_equal(band != IGNORE_LABEL, distance <= 3)
    np.testing.assert_array_equal(band[band != IGNORE_LABEL], mask[distance <= 3])
    assert (trimap_mask(np.ones((8, 8), np.uint8), 3) == IGNORE_LABEL).all()


def test_trimap_flag_scores_the_band_only(tiny_voc, tmp_path):
    data_dir, examples = tiny_voc
    model, kernel = pointwise_model()
    model.save(tmp_path / "model.keras")
    banded = {
        name: (image, trimap_mask(mask, 2)) for name, (image, mask) in examples.items()
    }

    results = evaluate.main(
        ["--model", str(tmp_path / "model.keras"), "--data-dir", data_dir,
         "--trimap", "2"]
    )  # fmt: skip

    expected = numpy_confusion(banded, kernel)
    with np.errstate(invalid="ignore"):  # 0 / 0: a class in neither
        per_class = np.diag(expected) / (
            expected.sum(0) + expected.sum(1) - np.diag(expected)
        )
    assert results["trimap"]["2"]["mean_iou"] == pytest.approx(np.nanmean(per_class))
    np.testing.assert_array_equal(
        results["confusion_matrix"], numpy_confusion(examples, kernel)
    )


def test_bad_trimap_is_a_clear_error():
    with pytest.raises(InputError, match="--trimap"):
        evaluate.parse_trimap("4,wide")


def test_crf_without_the_package_stops_with_the_install_line(
    tiny_voc, tmp_path, monkeypatch
):
    monkeypatch.setitem(__import__("sys").modules, "pydensecrf", None)
    monkeypatch.setitem(__import__("sys").modules, "pydensecrf.densecrf", None)
    with pytest.raises(InputError, match=r"pip install -r requirements-crf\.txt"):
        evaluate.main(["--model", "any.keras", "--data-dir", tiny_voc[0], "--crf"])


def test_crf_scores_are_stored_beside_the_network_s(tiny_voc, tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    data_dir, examples = tiny_voc
    model, kernel = pointwise_model()
    model.save(tmp_path / "model.keras")

    results = evaluate.main(
        ["--model", str(tmp_path / "model.keras"), "--data-dir", data_dir,
         "--crf", "--crf-iterations", "2", "--trimap", "2"]
    )  # fmt: skip

    np.testing.assert_array_equal(
        results["confusion_matrix"], numpy_confusion(examples, kernel)
    )
    crf_matrix = np.array(results["crf"]["confusion_matrix"])
    assert crf_matrix.sum() == np.sum(results["confusion_matrix"])  # same pixels
    assert results["crf"]["settings"]["iterations"] == 2
    assert set(results["trimap"]["2"]) == {"mean_iou", "mean_iou_crf"}


def write_run(run_dir, dataset_entry, num_classes, settings=None):
    """A tiny saved model and the results.json a training run leaves beside it."""
    inputs = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(inputs)
    keras.Model(inputs, logits).save(run_dir / "best.keras")
    results = {"mean_iou": 0.0, "argv": [], "settings": settings or {}}
    if dataset_entry is not None:
        results["dataset"] = dataset_entry
    (run_dir / "results.json").write_text(json.dumps(results))
    return str(run_dir / "best.keras")


def test_data_settings_default_to_the_run_s_results_json(shapes_dir, tmp_path, capsys):
    model_path = write_run(
        tmp_path,
        {
            "name": "shapes",
            "data_dir": shapes_dir,
            "layout": "voc",
            "class_names": list(shapes.SHAPES_CLASSES),
            "ignore_index": IGNORE_LABEL,
            "train_split": "train",
            "val_split": "val",
        },
        len(shapes.SHAPES_CLASSES),
    )

    results = evaluate.main(["--model", model_path])

    assert (results["dataset"], results["split"]) == ("shapes", "val")
    assert results["data_dir"] == shapes_dir
    assert list(results["per_class_iou"]) == list(shapes.SHAPES_CLASSES)
    args = evaluate.make_parser().parse_args(
        ["--model", "x", "--dataset", "shapes", "--data-dir", shapes_dir]
    )
    val_pixels = cli.resolve_dataset(args)
    expected = evaluate.confusion_plain(
        inference.load_model(model_path), val_pixels, "val", batch_size=4
    )
    np.testing.assert_array_equal(results["confusion_matrix"], expected)
    output = capsys.readouterr().out
    assert f"settings from {tmp_path / 'results.json'}" in output
    assert "batch 2/2" in output  # progress: 8 val images, 4 per batch


def test_a_run_trained_at_an_image_scale_is_scored_on_the_full_masks(
    tiny_voc, tmp_path, capsys
):
    data_dir, examples = tiny_voc
    model_path = write_run(tmp_path, None, NUM_CLASSES, {"image_scale": 0.5})

    results = evaluate.main(["--model", model_path, "--data-dir", data_dir])

    assert results["scales"] == [0.5]
    assert "the run's --image-scale" in capsys.readouterr().out
    full_pixels = sum(
        int((mask != IGNORE_LABEL).sum()) for _, mask in examples.values()
    )
    assert np.sum(results["confusion_matrix"]) == full_pixels
    given = evaluate.main(
        ["--model", model_path, "--data-dir", data_dir, "--scales", "1"]
    )
    assert given["scales"] == [1.0]


def test_an_older_results_json_falls_back_to_the_flags(tiny_voc, tmp_path, capsys):
    data_dir, examples = tiny_voc
    model_path = write_run(tmp_path, None, NUM_CLASSES)

    results = evaluate.main(["--model", model_path, "--data-dir", data_dir])

    assert (results["dataset"], results["split"]) == ("voc", "val")
    assert "no dataset entry in" in capsys.readouterr().out


def test_a_model_for_other_classes_is_refused(shapes_dir, tmp_path):
    model_path = write_run(tmp_path, None, len(shapes.SHAPES_CLASSES))
    with pytest.raises(InputError, match="predicts 6 classes but the data has 21"):
        evaluate.main(["--model", model_path, "--data-dir", shapes_dir])


def numpy_image_scores(image, mask, kernel):
    """An image's own per-class IoU (NaN: in neither), mean IoU and pixel accuracy."""
    predicted = np.argmax(image.astype(np.float32) @ kernel, axis=-1)
    truth, predicted = mask[mask != IGNORE_LABEL], predicted[mask != IGNORE_LABEL]
    ious = np.full(NUM_CLASSES, np.nan)
    for c in set(truth) | set(predicted):
        ious[c] = np.sum((truth == c) & (predicted == c)) / np.sum(
            (truth == c) | (predicted == c)
        )
    return ious, np.nanmean(ious), np.mean(truth == predicted)


@pytest.fixture()
def voc_with_void(write_voc):
    """tiny_voc's kind of images, one with a void frame, one all void."""
    rng = np.random.default_rng(3)
    examples = {}
    for i, (height, width) in enumerate([(20, 30), (33, 17), (25, 25), (16, 16)]):
        mask = rng.choice(np.array([0, 1, 5, 20], np.uint8), (height, width))
        examples[f"im{i}"] = (rng.integers(0, 256, (height, width, 3), np.uint8), mask)
    examples["im1"][1][:3] = IGNORE_LABEL  # 3 void rows of 33: void share 3/33.
    examples["im3"][1][:] = IGNORE_LABEL  # Nothing to score.
    return write_voc({"val": examples}), examples


def read_per_image(folder):
    with open(folder / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_per_image_csv_scores_each_image_on_its_own(voc_with_void, tmp_path):
    data_dir, examples = voc_with_void
    model, kernel = pointwise_model()
    model.save(tmp_path / "model.keras")

    scores = evaluate.main(
        ["--model", str(tmp_path / "model.keras"), "--data-dir", data_dir,
         "--worst", "2"]
    )  # fmt: skip

    rows = read_per_image(tmp_path)
    assert [row["image"] for row in rows] == ["im0", "im1", "im2", "im3"]
    assert list(rows[0]) == [
        "image", "mean_iou", "pixel_accuracy", "void_share",
        *(f"iou_{name}" for name in VOC_CLASSES), "image_path",
    ]  # fmt: skip
    assert rows[1]["image_path"].endswith("im1.jpg")
    for row, (image, mask) in zip(rows[:3], examples.values()):
        ious, mean, accuracy = numpy_image_scores(image, mask, kernel)
        assert float(row["mean_iou"]) == pytest.approx(mean, abs=1e-6)
        assert float(row["pixel_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
        cells = [row[f"iou_{name}"] for name in VOC_CLASSES]
        assert [cell == "" for cell in cells] == list(np.isnan(ious))
        present = ~np.isnan(ious)
        np.testing.assert_allclose(
            [float(cell) for cell in cells if cell], ious[present], atol=1e-6
        )
    assert float(rows[0]["void_share"]) == 0.0
    assert float(rows[1]["void_share"]) == pytest.approx(3 / 33)
    # All void: nothing scored, nothing ranked.
    assert rows[3]["void_share"] == "1.000000"
    assert rows[3]["mean_iou"] == rows[3]["pixel_accuracy"] == ""
    assert all(rows[3][f"iou_{name}"] == "" for name in VOC_CLASSES)

    worst = scores["worst_images"]
    by_iou = sorted(rows[:3], key=lambda row: float(row["mean_iou"]))
    assert [entry["image"] for entry in worst] == [row["image"] for row in by_iou[:2]]
    assert worst[0]["mean_iou"] <= worst[1]["mean_iou"]
    assert (tmp_path / "worst_images.png").is_file()
    with open(tmp_path / "eval.json") as f:
        assert json.load(f)["worst_images"] == worst


def test_per_image_path_writes_the_same_csv(voc_with_void, tmp_path):
    data_dir, _ = voc_with_void
    model, _ = pointwise_model()
    model.save(tmp_path / "model.keras")
    argv = ["--model", str(tmp_path / "model.keras"), "--data-dir", data_dir]

    evaluate.main([*argv, "--output-dir", str(tmp_path / "plain")])
    # --flip takes the one-image-at-a-time path; a pointwise model is mirror-symmetric.
    scores = evaluate.main(
        [*argv, "--flip", "--worst", "0", "--output-dir", str(tmp_path / "flip")]
    )

    assert read_per_image(tmp_path / "flip") == read_per_image(tmp_path / "plain")
    assert (tmp_path / "plain" / "worst_images.png").is_file()
    assert not (tmp_path / "flip" / "worst_images.png").exists()
    assert scores["worst_images"] == []


def test_a_negative_worst_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        evaluate.make_parser().parse_args(["--model", "x", "--worst", "-1"])
    assert "argument --worst: must be an integer >= 0, not '-1'" in (
        capsys.readouterr().err
    )
