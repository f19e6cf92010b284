#!/usr/bin/env bash
# Download PASCAL VOC 2012 trainval (about 2 GB) into data/VOCdevkit/VOC2012.
#
#   bash data/voc_download.sh
#   VOC_URL=https://your.mirror/VOCtrainval_11-May-2012.tar bash data/voc_download.sh
#
# Resumes a partial download, checks the MD5 before extracting, and does nothing
# when the dataset is already in place.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

here="$(cd "$(dirname "$0")" && pwd)"
url="${VOC_URL:-http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar}"
md5="${VOC_MD5:-6cd6e144f989b92b3379bac3b3de84fd}"
tar_path="$here/VOCtrainval_11-May-2012.tar"
target="$here/VOCdevkit/VOC2012"

if [[ -f "$target/ImageSets/Segmentation/val.txt" ]]; then
  echo "VOC 2012 is already in $target: nothing to do."
  exit 0
fi

if command -v curl >/dev/null; then
  curl --fail --location --continue-at - --output "$tar_path" "$url"
elif command -v wget >/dev/null; then
  wget --continue --output-document "$tar_path" "$url"
else
  echo "error: neither curl nor wget is installed; install one and rerun." >&2
  exit 1
fi

echo "Checking MD5 of $tar_path ..."
actual="$(md5sum "$tar_path" | cut -d' ' -f1)"
if [[ "$actual" != "$md5" ]]; then
  echo "error: $tar_path has MD5 $actual, expected $md5." >&2
  echo "The download is incomplete or corrupt: delete it and rerun, or set VOC_URL to a mirror." >&2
  exit 1
fi

tar -xf "$tar_path" -C "$here"
echo "VOC 2012 is in $target"
