"""make_dataset: joint augmentation, void kept, exact evaluation, clear errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from common.constants import IMAGE_MEAN
from common.voc import (
    IGNORE_LABEL,
    DatasetError,
    class_pixel_counts,
    list_pairs,
    make_dataset,
    resize_pair,
    scaled_size,
    voc_colormap,
)

COLORS = voc_colormap()


def painted_example(rng, height, width, labels=(0, 3, 7, IGNORE_LABEL)):
    """A mask of random blocks, and an image whose colour *is* the label's colour."""
    blocks = rng.choice(
        np.array(labels, np.uint8), size=(height // 4 + 1, width // 4 + 1)
    )
    mask = np.kron(blocks, np.ones((4, 4), np.uint8))[:height, :width]
    return COLORS[mask].copy(), mask


@pytest.fixture()
def painted_voc(write_voc):
    rng = np.random.default_rng(0)
    examples = {
        f"im{i}": painted_example(rng, 30 + 7 * i, 41 - 3 * i) for i in range(6)
    }
    return write_voc({"train": examples, "val": examples}), examples


def first_batch(dataset):
    return next(iter(dataset))


def test_training_batches_have_documented_types_and_shapes(shapes_dir):
    images, masks = first_batch(make_dataset(shapes_dir, "train", 4, 64, training=True))
    assert images.dtype == tf.float32 and images.shape == (4, 64, 64, 3)
    assert masks.dtype == tf.int32 and masks.shape == (4, 64, 64)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0


def test_crop_and_flip_move_image_and_mask_together(painted_voc):
    data_dir, _ = painted_voc
    # Scale fixed at 1, so only padding, cropping and flipping act: all exact.
    dataset = make_dataset(
        data_dir, "train", 6, 64, training=True, scale_range=(1.0, 1.0), seed=3
    )
    for images, masks in dataset.take(3):
        images, masks = images.numpy(), masks.numpy()
        labelled = masks != IGNORE_LABEL
        np.testing.assert_array_equal(images[labelled], COLORS[masks[labelled]])
        padded = (masks == IGNORE_LABEL) & np.all(images != COLORS[IGNORE_LABEL], -1)
        np.testing.assert_allclose(
            images[padded],
            np.broadcast_to(IMAGE_MEAN, images[padded].shape),
            atol=1e-4,
        )


def test_flips_happen_and_seeds_repeat(painted_voc):
    data_dir, _ = painted_voc

    def masks_for(seed):
        dataset = make_dataset(
            data_dir, "train", 1, 32, training=True, scale_range=(1, 1), seed=seed
        )
        return [m.numpy() for _, m in dataset.take(24)]

    first, again, other = masks_for(5), masks_for(5), masks_for(6)
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert not np.array_equal(np.stack(first), np.stack(other))


def test_scaling_never_invents_labels_and_keeps_void(painted_voc):
    data_dir, _ = painted_voc
    dataset = make_dataset(data_dir, "train", 6, 32, training=True, seed=1)
    values = set()
    for _, masks in dataset.take(8):
        values.update(np.unique(masks.numpy()).tolist())
    assert values <= {0, 3, 7, IGNORE_LABEL}
    assert IGNORE_LABEL in values and {0, 3, 7} <= values


def test_evaluation_scores_every_original_pixel(painted_voc):
    data_dir, examples = painted_voc
    dataset = make_dataset(data_dir, "val", 4, 32, training=False)
    images, masks = (np.concatenate(parts) for parts in zip(*dataset))
    # The largest image is 65 x 41: every example is padded to 96 x 64.
    assert images.shape[1:3] == masks.shape[1:] == (96, 64)
    for (image, mask), eval_image, eval_mask in zip(examples.values(), images, masks):
        h, w = mask.shape
        np.testing.assert_array_equal(eval_mask[:h, :w], mask)
        np.testing.assert_array_equal(eval_image[:h, :w], image)
        assert np.all(eval_mask[h:] == IGNORE_LABEL) and np.all(eval_mask[:, w:] == 255)


def test_image_scale_resizes_images_and_masks_alike_for_both_splits(write_voc):
    rng = np.random.default_rng(3)
    examples = {
        f"im{i}": painted_example(rng, 40 - 8 * i, 24 + 8 * i) for i in range(3)
    }
    data_dir = write_voc({"train": examples, "val": examples})

    val = make_dataset(data_dir, "val", 3, 32, training=False, image_scale=0.5)
    images, masks = first_batch(val)
    # The largest image is 40 x 40 -> 20 x 20, padded to 32 x 32.
    assert images.shape[1:3] == masks.shape[1:] == (32, 32)
    for (image, mask), eval_image, eval_mask in zip(examples.values(), images, masks):
        h, w = scaled_size(mask.shape, 0.5)
        # Nearest at exactly half: the lower-right pixel of every 2x2 cell.
        np.testing.assert_array_equal(eval_mask[:h, :w], mask[1::2, 1::2])
        assert np.all(eval_mask.numpy()[h:] == IGNORE_LABEL)
        # Antialiased: every pixel is averaged in, so the mean colour stays.
        np.testing.assert_allclose(
            eval_image.numpy()[:h, :w].mean((0, 1)), image.mean((0, 1)), atol=3
        )
    train = make_dataset(data_dir, "train", 3, 32, training=True, image_scale=0.5)
    values = set()
    for _, batch_masks in train.take(4):
        values.update(np.unique(batch_masks.numpy()).tolist())
    assert values <= {0, 3, 7, IGNORE_LABEL}


@pytest.mark.parametrize(
    "size, scale", [((360, 480), 0.5), ((37, 41), 0.5), ((3, 5), 0.1), ((65, 38), 0.75)]
)
def test_scaled_size_rounds_like_the_graph(size, scale):
    _, resized = resize_pair(tf.zeros((*size, 3)), tf.zeros(size, tf.uint8), scale)
    assert tuple(resized.shape) == scaled_size(size, scale)


def test_evaluation_with_margin_mirrors_the_image(painted_voc):
    data_dir, examples = painted_voc
    margin = 5
    dataset = make_dataset(
        data_dir,
        "val",
        6,
        32,
        training=False,
        label_margin=margin,
        input_size_rule=lambda n: n + 3,
    )
    images, masks = first_batch(dataset)
    image, mask = next(iter(examples.values()))
    h, w = mask.shape
    assert images.shape[1] - masks.shape[1] == 2 * margin
    np.testing.assert_array_equal(masks[0, :h, :w], mask)
    np.testing.assert_array_equal(
        images[0, margin : margin + h, margin : margin + w], image
    )
    np.testing.assert_array_equal(images[0, margin - 1, margin : margin + w], image[1])


def test_training_with_margin_crops_the_labels(shapes_dir):
    _, masks = first_batch(
        make_dataset(shapes_dir, "train", 2, 64, True, label_margin=8)
    )
    assert masks.shape == (2, 48, 48)


def test_class_weights_give_each_pixel_its_weight_and_void_zero(painted_voc):
    data_dir, _ = painted_voc
    weights = np.linspace(1, 2, 21)
    _, masks, pixel_weights = first_batch(
        make_dataset(data_dir, "train", 2, 32, True, class_weights=weights)
    )
    masks, pixel_weights = masks.numpy(), pixel_weights.numpy()
    void = masks == IGNORE_LABEL
    assert np.all(pixel_weights[void] == 0)
    np.testing.assert_allclose(pixel_weights[~void], weights[masks[~void]], rtol=1e-6)


def test_camvid_layout_and_ignore_index(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        mask = np.array([[0, 10, 11], [11, 2, 3]], np.uint8)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / split / "a.png")
        Image.fromarray(mask, mode="L").save(tmp_path / f"{split}annot" / "a.png")
    dataset = make_dataset(
        str(tmp_path), "val", 1, 32, False, num_classes=11, ignore_index=11
    )
    _, masks = first_batch(dataset)
    np.testing.assert_array_equal(masks[0, :2, :3], [[0, 10, 255], [255, 2, 3]])


def test_class_pixel_counts_skip_void(painted_voc):
    data_dir, examples = painted_voc
    counts, present = class_pixel_counts(list_pairs(data_dir, "val"), 21)
    all_masks = np.concatenate([m.ravel() for _, m in examples.values()])
    assert counts[3] == np.sum(all_masks == 3)
    assert counts.sum() == np.sum(all_masks != IGNORE_LABEL)
    assert present[3] == sum(
        np.sum(m != 255) for _, m in examples.values() if np.any(m == 3)
    )


# -- Bad input: every error names the file or folder and says what to do -----


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="voc_download.sh.*--dataset shapes"):
        make_dataset(str(tmp_path / "nope"), "train", 1, 32, True, layout="voc")
    with pytest.raises(DatasetError, match="SPLIT/images/ and SPLIT/masks/"):
        make_dataset(str(tmp_path / "nope"), "train", 1, 32, True)


def test_listed_id_without_image_names_the_file(painted_voc):
    data_dir, _ = painted_voc
    os.remove(os.path.join(data_dir, "JPEGImages", "im2.jpg"))
    with pytest.raises(DatasetError, match="im2.jpg"):
        make_dataset(data_dir, "train", 1, 32, True)


def test_size_mismatch_names_the_mask(write_voc):
    image = np.zeros((10, 12, 3), np.uint8)
    data_dir = write_voc({"val": {"odd": (image, np.zeros((10, 11), np.uint8))}})
    with pytest.raises(DatasetError, match="odd.png.*11x10.*12x10"):
        make_dataset(data_dir, "val", 1, 32, False)


def test_out_of_range_class_names_the_mask(write_voc):
    mask = np.zeros((8, 8), np.uint8)
    data_dir = write_voc({"val": {"too_big": (np.zeros((8, 8, 3), np.uint8), mask)}})
    mask[2, 2] = 30  # As a single-channel index PNG (a palette PNG would fail sooner).
    mask_path = os.path.join(data_dir, "SegmentationClass", "too_big.png")
    Image.fromarray(mask, mode="L").save(mask_path)
    dataset = make_dataset(data_dir, "val", 1, 32, False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="too_big.png.*30"):
        first_batch(dataset)
    with pytest.raises(DatasetError, match="too_big.png.*30"):
        class_pixel_counts(list_pairs(data_dir, "val"), 21)


def test_corrupt_image_names_the_file(write_voc):
    data_dir = write_voc(
        {"val": {"broken": (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))}}
    )
    with open(os.path.join(data_dir, "JPEGImages", "broken.jpg"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DatasetError, match="broken.jpg"):
        make_dataset(data_dir, "val", 1, 32, False)
