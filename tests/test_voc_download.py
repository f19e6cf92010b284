"""data/voc_download.sh against a local HTTP server: extract, skip, resume, verify."""

import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import scipy.io
from PIL import Image

from common.voc import voc_colormap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("md5sum") is None, reason="needs md5sum")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support (http.server has none), so the
    script's resume can be tested. Records every request path and range."""

    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        start = int(match.group(1)) if match else 0
        self.requests.append((self.path, start))
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
            )
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def add_bytes(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def png_bytes(array, mode):
    buffer = io.BytesIO()
    image = Image.fromarray(array, mode=mode)
    if mode == "P":
        image.putpalette(voc_colormap().ravel().tolist())
    image.save(buffer, "PNG")
    return buffer.getvalue()


def make_voc_tar(path):
    """VOC layout: train = a, b; val = c. Masks are palette PNGs."""
    with tarfile.open(path, "w") as archive:
        base = "VOCdevkit/VOC2012/"
        for image_id in "abc":
            rgb = np.zeros((4, 5, 3), np.uint8)
            add_bytes(
                archive, f"{base}JPEGImages/{image_id}.jpg", png_bytes(rgb, "RGB")
            )
            mask = np.full((4, 5), 1, np.uint8)
            add_bytes(
                archive, f"{base}SegmentationClass/{image_id}.png", png_bytes(mask, "P")
            )
        add_bytes(archive, f"{base}ImageSets/Segmentation/train.txt", b"a\nb\n")
        add_bytes(archive, f"{base}ImageSets/Segmentation/val.txt", b"c\n")


def make_sbd_tgz(path):
    """SBD layout: train = b, d, c (c overlaps VOC val); val = e."""
    with tarfile.open(path, "w:gz") as archive:
        base = "benchmark_RELEASE/dataset/"
        for image_id in "bcde":
            buffer = io.BytesIO()
            mask = np.full((4, 5), ord(image_id) - ord("a"), np.uint8)
            scipy.io.savemat(buffer, {"GTcls": {"Segmentation": mask}})
            add_bytes(archive, f"{base}cls/{image_id}.mat", buffer.getvalue())
        add_bytes(archive, f"{base}train.txt", b"b\nd\nc\n")
        add_bytes(archive, f"{base}val.txt", b"e\n")


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_voc_tar(served / "voc.tar")
    make_sbd_tgz(served / "sbd.tgz")
    RangeHandler.requests = []
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture()
def data_dir(tmp_path):
    """A copy of data/ to run the script in, so it writes nowhere in the repo."""
    target = tmp_path / "data"
    target.mkdir()
    for name in ("voc_download.sh", "sbd_to_aug.py"):
        shutil.copy(os.path.join(ROOT, "data", name), target / name)
    return target


def run_script(data_dir, served, url, *args, **env):
    environment = dict(
        os.environ,
        VOC_URL=f"{url}/voc.tar",
        VOC_MD5=md5(served / "voc.tar"),
        SBD_URL=f"{url}/sbd.tgz",
        SBD_MD5=md5(served / "sbd.tgz"),
        PYTHON=sys.executable,
        PYTHONPATH=ROOT,
    )
    environment.update(env)
    return subprocess.run(
        ["bash", str(data_dir / "voc_download.sh"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_downloads_extracts_and_then_does_nothing(server, data_dir):
    served, url = server
    first = run_script(data_dir, served, url)
    assert first.returncode == 0, first.stderr
    voc = data_dir / "VOCdevkit" / "VOC2012"
    assert (voc / "JPEGImages" / "a.jpg").is_file()
    assert (voc / "ImageSets" / "Segmentation" / "val.txt").read_text() == "c\n"

    requests_before = len(RangeHandler.requests)
    second = run_script(data_dir, served, url)
    assert second.returncode == 0
    assert "nothing to download" in second.stdout
    assert len(RangeHandler.requests) == requests_before


def test_resumes_a_truncated_download(server, data_dir):
    served, url = server
    data = (served / "voc.tar").read_bytes()
    (data_dir / "VOCtrainval_11-May-2012.tar").write_bytes(data[: len(data) // 2])

    result = run_script(data_dir, served, url)

    assert result.returncode == 0, result.stderr
    assert RangeHandler.requests == [("/voc.tar", len(data) // 2)]
    assert (data_dir / "VOCdevkit" / "VOC2012" / "JPEGImages" / "c.jpg").is_file()


def test_checksum_mismatch_names_the_file_and_keeps_it(server, data_dir):
    served, url = server
    result = run_script(data_dir, served, url, VOC_MD5="0" * 32)
    assert result.returncode == 1
    assert "VOCtrainval_11-May-2012.tar has MD5" in result.stderr
    assert "rerun" in result.stderr
    assert (data_dir / "VOCtrainval_11-May-2012.tar").is_file()
    assert not (data_dir / "VOCdevkit").exists()


def test_with_sbd_builds_train_aug_without_voc_val(server, data_dir):
    served, url = server
    result = run_script(data_dir, served, url, "--with-sbd", SBD_EXPECTED_IDS="4")
    assert result.returncode == 0, result.stderr
    voc = data_dir / "VOCdevkit" / "VOC2012"
    train_aug = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text()
    assert train_aug.split() == ["a", "b", "d", "e"]  # c is VOC val: left out
    # VOC's own annotation wins where it exists (b: 1), SBD's elsewhere (d: 3).
    assert np.all(np.array(Image.open(voc / "SegmentationClassAug" / "b.png")) == 1)
    assert np.all(np.array(Image.open(voc / "SegmentationClassAug" / "d.png")) == 3)


def test_wrong_train_aug_size_is_an_error(server, data_dir):
    served, url = server
    result = run_script(data_dir, served, url, "--with-sbd")
    assert result.returncode != 0
    assert "train_aug has 4 ids, expected 10582" in result.stderr


def test_unknown_option_is_refused(data_dir):
    result = subprocess.run(
        ["bash", str(data_dir / "voc_download.sh"), "--bogus"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--bogus" in result.stderr
