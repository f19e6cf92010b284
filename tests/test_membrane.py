"""data/membrane_download.sh on the shared copy of the ISBI 2012 membranes:
checksums enforced, the 25/5 split laid out for --dataset folder, masks binary.

Skips when ../shared/data/membrane (beside the checkout) is absent.
"""

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

from common.errors import DatasetError
from common.voc import list_pairs, make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "membrane")
pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"{SHARED} is absent"),
    pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs sha256sum"),
]


@pytest.fixture()
def data_dir(tmp_path):
    """A copy of the script and its checksum list, so it writes nowhere in the repo."""
    target = tmp_path / "data"
    target.mkdir()
    for name in ("membrane_download.sh", "membrane_SHA256SUMS"):
        shutil.copy(os.path.join(ROOT, "data", name), target / name)
    return target


def run_script(data_dir, *args, **env):
    return subprocess.run(
        ["bash", str(data_dir / "membrane_download.sh"), *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def names(folder):
    return sorted(os.listdir(folder), key=lambda name: int(name.split(".")[0]))


def test_committed_checksums_are_the_shared_copy_s():
    with open(os.path.join(ROOT, "data", "membrane_SHA256SUMS")) as f:
        committed = f.read()
    with open(os.path.join(SHARED, "SHA256SUMS")) as f:
        assert committed == f.read()
    assert len(committed.splitlines()) == 90


def test_lays_out_25_train_and_5_val_slices_byte_for_byte(data_dir):
    result = run_script(data_dir, "--from", SHARED)
    assert result.returncode == 0, result.stderr

    out = data_dir / "membrane"
    expected = {"train": range(25), "val": range(25, 30)}
    for split, numbers in expected.items():
        for kind in ("images", "masks"):
            assert names(out / split / kind) == [f"{n}.png" for n in numbers]
    assert names(out / "test" / "images") == [f"{n}.png" for n in range(30)]
    assert not (out / "test" / "masks").exists()  # Never published.
    pairs = {"train/masks/3.png": "train/label/3.png", "val/images/27.png":
             "train/image/27.png", "test/images/5.png": "test/5.png"}  # fmt: skip
    for laid_out, source in pairs.items():
        assert sha256(out / laid_out) == sha256(os.path.join(SHARED, source))
    assert "25-29" in (out / "SPLITS.txt").read_text()

    again = run_script(data_dir, MEMBRANE_FROM=SHARED)  # The env var works too.
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_laid_out_masks_read_as_two_classes_only_with_binary(data_dir):
    assert run_script(data_dir, "--from", SHARED).returncode == 0
    data = str(data_dir / "membrane")
    assert len(list_pairs(data, "val")) == 5
    with pytest.raises(DatasetError, match="--mask-values binary"):
        make_dataset(data, "val", 5, 256, False, num_classes=2)

    dataset = make_dataset(
        data, "val", 5, 256, False, num_classes=2, mask_values="binary"
    )
    masks = next(iter(dataset))[1].numpy()
    assert masks.shape == (5, 512, 512) and set(np.unique(masks)) == {0, 1}
    assert 0.7 < masks.mean() < 0.9  # About 80% cell (class 1), the rest membrane.


@pytest.fixture()
def tampered(tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(SHARED, copy)
    label = copy / "train" / "label" / "3.png"
    data = bytearray(label.read_bytes())
    data[-20] ^= 1
    label.write_bytes(bytes(data))
    return copy


def test_a_tampered_file_stops_it_before_anything_is_laid_out(data_dir, tampered):
    result = run_script(data_dir, "--from", str(tampered))
    assert result.returncode == 1
    assert "train/label/3.png has SHA-256" in result.stderr
    assert not (data_dir / "membrane").exists()


def test_a_missing_file_is_named(data_dir, tampered):
    os.remove(tampered / "test" / "12.png")
    result = run_script(data_dir, "--from", str(tampered))
    assert result.returncode == 1 and "test/12.png is missing" in result.stderr


def test_downloads_every_file_from_the_url(data_dir):
    handler = functools.partial(QuietHandler, directory=SHARED)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_script(data_dir, MEMBRANE_URL=url)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(data_dir / "membrane" / "train" / "masks")) == 25
    assert not (data_dir / "membrane_download").exists()  # Staging removed.


def test_unknown_option_is_refused(data_dir):
    result = run_script(data_dir, "--bogus")
    assert result.returncode == 2 and "--bogus" in result.stderr


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
