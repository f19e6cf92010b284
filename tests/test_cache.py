"""The dataset cache (common/cache.py) and its on-device augmentation (common/augment).

The cache is how the GPU machine, which has no TensorFlow, trains: written
here by the project's reader, read back with numpy and OpenCV, and augmented
with keras.ops on whichever backend runs (marked `backends`).
"""

import os

import numpy as np
import pytest
from keras import ops
from PIL import Image

import segnet_train
from common import augment, cache, cli, training, voc
from common.constants import IGNORE_LABEL, IMAGE_MEAN
from common.errors import DatasetError

pytestmark = pytest.mark.backends


@pytest.fixture(scope="module")
def camvid_cache(camvid_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("camvid-cache"))
    dataset = voc.DatasetSpec(camvid_dir, "camvid", voc.CAMVID_CLASSES, voc.CAMVID_VOID)
    cache.write_cache(dataset, ["train", "val"], out)
    return out


def test_masks_come_back_exact_with_void_as_255_and_images_close(
    camvid_dir, camvid_cache
):
    images, masks, names = cache.read_split(camvid_cache, "train")
    assert images.shape == (8, 45, 61, 3) and masks.shape == (8, 45, 61)
    assert names[0] == "train_000"
    stored = np.array(
        Image.open(os.path.join(camvid_dir, "trainannot", "train_000.png"))
    )
    expected = np.where(stored == voc.CAMVID_VOID, IGNORE_LABEL, stored)
    np.testing.assert_array_equal(masks[0], expected)  # PNG: lossless.
    original = np.array(Image.open(os.path.join(camvid_dir, "train", "train_000.png")))
    # JPEG at quality 95: these blocks of saturated colour with noise (std 10)
    # are its worst case, and still within the noise; channels swapped (RGB
    # read as BGR) would be far off.
    assert np.abs(images[0].astype(int) - original).mean() < 10
    assert np.abs(images[0][..., ::-1].astype(int) - original).mean() > 30
    spec = cache.dataset_spec(camvid_cache)
    assert (spec.layout, spec.class_names) == ("cache", voc.CAMVID_CLASSES)


def test_a_folder_without_a_cache_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="python -m common.cli cache"):
        cache.dataset_spec(str(tmp_path))


def _striped(batch: int = 2, size: int = 24):
    """Masks of vertical stripes (class = column // 6) and images that encode them."""
    masks = np.tile((np.arange(size) // 6).astype(np.uint8), (batch, size, 1))
    images = np.repeat((masks * 40 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    return images, masks


def test_scale_one_and_a_full_crop_give_the_image_or_its_mirror():
    images, masks = _striped()
    draws = np.random.default_rng(0).random((2, augment.DRAWS), np.float32)
    out_images, out_masks = augment.random_scale_crop_flip(
        images, masks, (24, 24), draws, 24, (1.0, 1.0), IMAGE_MEAN, ops
    )
    out_images, out_masks = np.asarray(out_images), np.asarray(out_masks)
    for image, mask, out_image, out_mask in zip(images, masks, out_images, out_masks):
        flipped = not np.array_equal(out_mask, mask)
        expected = mask[:, ::-1] if flipped else mask
        np.testing.assert_array_equal(out_mask, expected)
        expected_image = image[:, ::-1] if flipped else image
        np.testing.assert_allclose(out_image, expected_image, atol=1e-3)


def test_labels_stay_labels_and_images_follow_their_masks():
    images, masks = _striped(batch=8)
    draws = np.random.default_rng(1).random((8, augment.DRAWS), np.float32)
    out_images, out_masks = augment.random_scale_crop_flip(
        images, masks, (24, 24), draws, 16, (0.5, 2.0), IMAGE_MEAN, ops
    )
    out_images, out_masks = np.asarray(out_images), np.asarray(out_masks)
    assert out_images.shape == (8, 16, 16, 3) and out_masks.dtype == np.int32
    assert set(np.unique(out_masks)) <= {0, 1, 2, 3, IGNORE_LABEL}
    labelled = out_masks != IGNORE_LABEL
    # Bilinear images blend across a stripe's edge; masks never do.
    agree = np.abs(out_images[..., 0] - (out_masks * 40 + 20)) < 1
    assert agree[labelled].mean() > 0.8


def test_what_lies_outside_the_scaled_image_is_mean_and_void():
    images, masks = _striped(batch=1, size=24)
    # Scale 1/2: a 24x24 crop of a 12x12 image, from its corner, not flipped.
    draws = np.array([[0.0, 0.0, 0.0, 0.9]], np.float32)
    out_images, out_masks = augment.random_scale_crop_flip(
        images, masks, (24, 24), draws, 24, (0.5, 0.5), IMAGE_MEAN, ops
    )
    out_images, out_masks = np.asarray(out_images), np.asarray(out_masks)
    assert (out_masks[0, 12:] == IGNORE_LABEL).all()
    assert (out_masks[0, :, 12:] == IGNORE_LABEL).all()
    assert (out_masks[0, :12, :12] != IGNORE_LABEL).all()
    np.testing.assert_allclose(out_images[0, 20, 20], IMAGE_MEAN, atol=1e-4)


def test_training_batches_repeat_with_the_seed_and_walk_through_the_split():
    images, masks = _striped(batch=6)
    first, again = (
        cache.TrainingBatches(images, masks, 4, 16, 3, (0.5, 1.5), seed=7)
        for _ in range(2)
    )
    np.testing.assert_array_equal(np.asarray(first[1][1]), np.asarray(again[1][1]))
    # 3 batches of 4 from 6 images: two shuffled passes, each image twice.
    ids = np.concatenate([first.image_ids(batch) for batch in range(3)])
    assert sorted(ids) == sorted(list(range(6)) * 2)
    with pytest.raises(IndexError):
        first[3]


def test_a_training_batch_is_the_augmentation_of_its_images_and_draws():
    """TrainingBatches runs `common.augment` compiled (one program on JAX): the
    same pixels as the function run op by op on the batch's images and draws."""
    images, masks = _striped(batch=6)
    batches = cache.TrainingBatches(images, masks, 4, 16, 3, (0.5, 1.5), seed=7)
    ids = batches.image_ids(1)
    draws = np.random.default_rng([7, 1, 1]).random((4, augment.DRAWS), np.float32)
    expected = augment.random_scale_crop_flip(
        ops.convert_to_tensor(images[ids]),
        ops.convert_to_tensor(masks[ids]),
        masks.shape[1:],
        ops.convert_to_tensor(draws),
        16,
        (0.5, 1.5),
        IMAGE_MEAN,
        ops,
    )
    got_images, got_masks = batches[1]
    np.testing.assert_array_equal(np.asarray(got_masks), np.asarray(expected[1]))
    np.testing.assert_allclose(
        np.asarray(got_images), np.asarray(expected[0]), atol=1e-3
    )


def test_evaluation_batches_pad_like_the_pipeline_and_fill_the_last_batch(
    camvid_cache,
):
    images, masks, names = cache.read_split(camvid_cache, "val")
    batches = cache.EvaluationBatches(images, masks, names, 3)
    assert len(batches) == 2 and batches.sizes == [(45, 61)] * 4
    last_images, last_masks = (np.asarray(part) for part in batches[1])
    assert last_images.shape == (3, 64, 64, 3) and last_masks.shape == (3, 64, 64)
    np.testing.assert_array_equal(last_masks[0, :45, :61], masks[3].astype(np.int32))
    assert (last_masks[0, 45:] == IGNORE_LABEL).all()
    assert (last_masks[1:] == IGNORE_LABEL).all()  # Fillers count nothing.
    np.testing.assert_allclose(last_images[0, 50, 50], IMAGE_MEAN, atol=1e-4)


def test_median_weights_of_a_cache_equal_those_of_its_files(camvid_dir, camvid_cache):
    weights = {}
    for dataset_name, data_dir in (("camvid", camvid_dir), ("cache", camvid_cache)):
        args = segnet_train.parse_args(
            ["--dataset", dataset_name, "--data-dir", data_dir]
            + ["--class-weighting", "median", "--crop-size", "32"]
        )
        args.global_batch_size = 2  # As set_up sets it.
        train, _, steps = training.make_datasets(args, cli.resolve_dataset(args))
        weights[dataset_name] = args.class_weights
    assert steps == 4  # 8 images, batches of 2.
    np.testing.assert_allclose(weights["cache"], weights["camvid"], rtol=1e-6)
    _, masks, pixel_weights = (np.asarray(part) for part in train[0])
    table = np.array([*weights["cache"], *[0.0] * (256 - len(weights["cache"]))])
    np.testing.assert_allclose(pixel_weights, table[masks], rtol=1e-6)
