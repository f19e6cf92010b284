#!/usr/bin/env bash
# Download PASCAL VOC 2012 trainval (about 2 GB) into data/VOCdevkit/VOC2012.
#
#   bash data/voc_download.sh              # VOC 2012 only
#   bash data/voc_download.sh --with-sbd   # also SBD (1.4 GB) -> train_aug, 10,582 ids
#
# A partial download resumes; every archive's MD5 is checked before it is
# extracted; a second run with everything in place does nothing and says so.
# Mirrors: VOC_URL=... and SBD_URL=... override the download addresses (the
# checksums are still enforced). Needs curl or wget, tar, md5sum, and Python
# with scipy for --with-sbd.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

with_sbd=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --with-sbd) with_sbd=1 ;;
    *) echo "error: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "$0")" && pwd)"
voc_url="${VOC_URL:-http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar}"
voc_md5="${VOC_MD5:-6cd6e144f989b92b3379bac3b3de84fd}"
sbd_url="${SBD_URL:-http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz}"
sbd_md5="${SBD_MD5:-82b4d87ceb2ed10f6038a1cba92111cb}"
voc_dir="$here/VOCdevkit/VOC2012"

if command -v curl >/dev/null; then
  fetch() { curl --fail --location --silent --show-error --continue-at - --output "$2" "$1"; }
elif command -v wget >/dev/null; then
  fetch() { wget --quiet --continue --output-document "$2" "$1"; }
else
  echo "error: neither curl nor wget is installed; install one and rerun." >&2
  exit 1
fi

md5_of() { md5sum "$1" | cut -d' ' -f1; }

# download URL FILE MD5: resume FILE unless it is already complete, then verify it.
download() {
  local url="$1" file="$2" md5="$3"
  if [[ -f "$file" && "$(md5_of "$file")" == "$md5" ]]; then
    echo "$file is already complete."
    return
  fi
  echo "Downloading $url -> $file (resumes a partial file) ..."
  fetch "$url" "$file"
  local actual
  actual="$(md5_of "$file")"
  if [[ "$actual" != "$md5" ]]; then
    echo "error: $file has MD5 $actual, expected $md5." >&2
    echo "It was kept. If the download was cut off, rerun to resume it; if it is" >&2
    echo "corrupt, delete $file and rerun, or set a mirror (VOC_URL / SBD_URL)." >&2
    exit 1
  fi
}

if [[ -f "$voc_dir/ImageSets/Segmentation/val.txt" ]]; then
  echo "VOC 2012 is already in $voc_dir: nothing to download."
else
  download "$voc_url" "$here/VOCtrainval_11-May-2012.tar" "$voc_md5"
  tar -xf "$here/VOCtrainval_11-May-2012.tar" -C "$here"
  echo "VOC 2012 is in $voc_dir"
fi

if [[ "$with_sbd" == 1 ]]; then
  if [[ -f "$voc_dir/ImageSets/Segmentation/train_aug.txt" ]]; then
    echo "train_aug is already in $voc_dir: nothing to download."
  else
    download "$sbd_url" "$here/benchmark.tgz" "$sbd_md5"
    tar -xzf "$here/benchmark.tgz" -C "$here"
    "${PYTHON:-python3}" "$here/sbd_to_aug.py" "$here/benchmark_RELEASE/dataset" "$voc_dir"
  fi
fi
