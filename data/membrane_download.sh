#!/usr/bin/env bash
# Fetch the ISBI 2012 EM membrane data (Ronneberger et al. 2015, Sec. 3.1: 30
# labelled 512x512 slices of a fly larva's nerve cord) from the PNG copy in
# github.com/zhixuhao/unet, data/membrane, and lay it out for --dataset folder:
#
#   bash data/membrane_download.sh             # from GitHub (13 MB, 90 files)
#   bash data/membrane_download.sh --from DIR  # from a local copy (or MEMBRANE_FROM=DIR)
#
# DIR (or the download) holds train/image/N.png, train/label/N.png and
# test/N.png, N = 0..29. Every file's SHA-256 must match data/membrane_SHA256SUMS
# before anything is laid out. Result, in data/membrane/ (SPLITS.txt says it):
#   train/images, train/masks   slices 0-24 (training)
#   val/images,   val/masks     slices 25-29 (validation)
#   test/images                 the 30 test slices (no masks: never published)
# Masks are black-and-white (0 = membrane, 255 = cell): train with
# --mask-values binary --num-classes 2 --class-names membrane cell.
# MEMBRANE_URL=... overrides the download address (checksums still enforced).
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

source_dir="${MEMBRANE_FROM:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --from)
      [[ $# -ge 2 ]] || { echo "error: --from needs a folder" >&2; exit 2; }
      source_dir="$2"; shift ;;
    *) echo "error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

here="$(cd "$(dirname "$0")" && pwd)"
sums="$here/membrane_SHA256SUMS"
out="$here/membrane"
commit=b45af4d458437d8281cc218a07fd4380818ece4a
url="${MEMBRANE_URL:-https://raw.githubusercontent.com/zhixuhao/unet/$commit/data/membrane}"
first_val=25  # Slices 0-24 train, 25-29 validate.

if [[ -f "$out/SPLITS.txt" ]]; then
  echo "The membrane data is already in $out: nothing to do."
  exit 0
fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch FILE: download one file of the list into the staging folder.
fetch() {
  local file="$1"
  mkdir -p "$(dirname "$staging/$file")"
  if command -v curl >/dev/null; then
    curl --fail --location --silent --show-error --output "$staging/$file" "$url/$file"
  elif command -v wget >/dev/null; then
    wget --quiet --output-document "$staging/$file" "$url/$file"
  else
    echo "error: neither curl nor wget is installed; install one, or use --from." >&2
    exit 1
  fi
}

if [[ -n "$source_dir" ]]; then
  [[ -d "$source_dir" ]] || { echo "error: --from folder '$source_dir' does not exist." >&2; exit 1; }
  staging="$source_dir"
  echo "Checking the files in $source_dir ..."
else
  staging="$here/membrane_download"  # Kept if a file fails, so a rerun resumes.
  echo "Downloading $url (90 files) ..."
fi

while read -r expected file; do
  file="${file#./}"
  if [[ -z "$source_dir" && ! -f "$staging/$file" ]]; then
    fetch "$file"
  fi
  if [[ ! -f "$staging/$file" ]]; then
    echo "error: $staging/$file is missing." >&2
    exit 1
  fi
  actual="$(sha256_of "$staging/$file")"
  if [[ "$actual" != "$expected" ]]; then
    echo "error: $staging/$file has SHA-256 $actual, expected $expected (from $sums)." >&2
    if [[ -z "$source_dir" ]]; then rm -f "$staging/$file"; echo "It was deleted; rerun to fetch it again." >&2; fi
    exit 1
  fi
done < "$sums"
echo "All 90 files match $sums."

rm -rf "$out"
mkdir -p "$out"/{train,val}/{images,masks} "$out/test/images"
for n in $(seq 0 29); do
  split=$([[ "$n" -lt "$first_val" ]] && echo train || echo val)
  cp "$staging/train/image/$n.png" "$out/$split/images/$n.png"
  cp "$staging/train/label/$n.png" "$out/$split/masks/$n.png"
  cp "$staging/test/$n.png" "$out/test/images/$n.png"
done
cat > "$out/SPLITS.txt" <<SPLITS
ISBI 2012 EM membranes (zhixuhao/unet data/membrane at commit $commit).
train: slices 0-24 (train/images, train/masks)
val:   slices 25-29 (val/images, val/masks)
test:  test slices 0-29 (test/images; no masks, the labels were never published)
Masks: 0 = membrane, 255 = cell; read with --mask-values binary --num-classes 2.
SPLITS
if [[ -z "$source_dir" ]]; then rm -rf "$staging"; fi
echo "The membrane data is in $out (train: 25 slices, val: 5, test: 30 unlabelled)."
