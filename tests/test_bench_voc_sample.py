"""The benchmarks' VOC images: `bench/voc_sample_ids.txt`, read from --data-dir."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.harness import SPLITS, sample_pairs
from bench.pipeline import copy_as_voc_split
from common import voc
from common.errors import DatasetError


def image_ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [os.path.splitext(os.path.basename(image))[0] for image, _ in pairs]


@pytest.mark.parametrize("split", SPLITS)
def test_ids_file_lists_the_sample_splits_in_their_order(split, voc_sample_dir):
    # Same images in the same order as the fixture's split files, so the tables
    # made from the fixture and from a full VOC download are the same.
    assert image_ids(sample_pairs(voc_sample_dir, split)) == image_ids(
        voc.list_pairs(voc_sample_dir, split, "voc")
    )


def test_missing_files_stop_with_one_line_naming_them(tmp_path, voc_sample_dir):
    data_dir = shutil.copytree(voc_sample_dir, tmp_path / "VOC2012")
    os.remove(data_dir / "JPEGImages" / "2007_000042.jpg")
    os.remove(data_dir / "SegmentationClass" / "2007_000129.png")
    with pytest.raises(DatasetError) as error:
        sample_pairs(str(data_dir), "val")
    message = str(error.value)
    assert "\n" not in message
    assert "lacks 2 of the 24 files" in message
    assert os.path.join("JPEGImages", "2007_000042.jpg") in message
    assert os.path.join("SegmentationClass", "2007_000129.png") in message
    assert "bash data/voc_download.sh" in message
    sample_pairs(str(data_dir), "train")  # Every train image is still there.


def test_missing_folder_says_how_to_get_voc(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*voc_download.sh"):
        sample_pairs(str(tmp_path / "VOCdevkit" / "VOC2012"), "trainval")


def test_pipeline_reads_just_the_28_train_images(tmp_path, voc_sample_dir):
    pairs = sample_pairs(voc_sample_dir, "train")
    copy = str(tmp_path / "train")
    copy_as_voc_split(pairs, copy, "train")
    copied = voc.list_pairs(copy, "train", "voc")
    assert len(copied) == 28
    assert image_ids(copied) == image_ids(pairs)
    with open(pairs[0][1], "rb") as original, open(copied[0][1], "rb") as mask:
        assert mask.read() == original.read()
