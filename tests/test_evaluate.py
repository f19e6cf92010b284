"""evaluate.py against a confusion matrix computed independently in numpy."""

import json

import keras
import numpy as np
import pytest

import evaluate
from common import inference, training
from common.voc import IGNORE_LABEL, InputError

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
    args = evaluate.make_parser().parse_args(["--model", "x", "--data-dir", data_dir])
    dataset = training.resolve_dataset(args)

    plain = evaluate.confusion_plain(model, dataset, "val", batch_size=2)
    tta = evaluate.confusion_multiscale(model, dataset, "val", (1.0,), flip=False)
    # A pointwise model is mirror-symmetric, so flip-and-unflip must change nothing.
    flipped = evaluate.confusion_multiscale(model, dataset, "val", (1.0,), flip=True)

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
