"""Shared fixtures: small datasets written on the fly, and the real VOC sample."""

from __future__ import annotations

import os

import pytest

from common import shapes

VOC_SAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "voc_sample", "VOC2012"
)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """A tiny `shapes` dataset in the VOC layout: 24 train and 8 val images."""
    return shapes.generate_shapes(
        str(tmp_path_factory.mktemp("shapes")), num_train=24, num_val=8, seed=1
    )


@pytest.fixture()
def voc_sample_dir() -> str:
    """The 40 real VOC 2012 pairs beside the checkout; skips when absent."""
    if not os.path.isdir(VOC_SAMPLE):
        pytest.skip("../shared/data/voc_sample is not present")
    return VOC_SAMPLE
