#!/usr/bin/env bash
# Install the web-viewer stack once (idempotent; a second run only checks), for the browser
# tests (tests/viewers), the compatibility matrix (scripts/viewer_matrix.py) and the demo:
#   - Debian: orthanc-dicomweb (DICOMweb plugin), orthanc-webviewer (Orthanc Web Viewer),
#     chromium + chromium-driver (the headless browser; never a downloaded one);
#   - Python: playwright (drives /usr/bin/chromium; `playwright install` is never run);
#   - OHIF Viewer v3: the prebuilt PWA in the npm package @ohif/app (its dist/ folder), unpacked
#     into .cache/ohif/<version>/ (gitignored). Nothing is fetched at run time.
# Each step says what failed. Usage: bash scripts/viewers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OHIF_VERSION=${OHIF_VERSION:-3.13.2}
PLAYWRIGHT_VERSION=${PLAYWRIGHT_VERSION:-1.65.3}
DEB_PACKAGES=(orthanc-dicomweb orthanc-webviewer chromium chromium-driver)
OHIF_DIR=.cache/ohif/$OHIF_VERSION
start=$(date +%s)

fail() { echo "viewers: FAILED: $*" >&2; exit 1; }

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "viewers: installing Debian packages: ${missing[*]}"
        apt-get update -qq || fail "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/dev/null || fail "apt-get install ${missing[*]}"
    else
        fail "missing Debian packages (${missing[*]}); run as root to install them"
    fi
fi

if ! .venv/bin/python -c "import playwright, sys; from importlib.metadata import version; \
sys.exit(version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
    echo "viewers: installing playwright==$PLAYWRIGHT_VERSION (Python package only, no browser)"
    .venv/bin/python -m pip install -q "playwright==$PLAYWRIGHT_VERSION" \
        || fail "pip install playwright==$PLAYWRIGHT_VERSION"
fi

if [[ ! -f $OHIF_DIR/.complete ]]; then
    command -v npm >/dev/null || fail "npm not found (Node.js and npm are needed to fetch OHIF)"
    echo "viewers: fetching OHIF @ohif/app@$OHIF_VERSION (prebuilt dist, about 50 MB)"
    rm -rf "$OHIF_DIR" && mkdir -p "$OHIF_DIR"
    tarball=$(cd "$OHIF_DIR" && npm pack --silent "@ohif/app@$OHIF_VERSION") \
        || fail "npm pack @ohif/app@$OHIF_VERSION"
    tar -xzf "$OHIF_DIR/$tarball" -C "$OHIF_DIR" package/dist package/package.json \
        || fail "unpacking $OHIF_DIR/$tarball"
    rm -f "$OHIF_DIR/$tarball"
    [[ -f $OHIF_DIR/package/dist/index.html ]] || fail "$OHIF_DIR/package/dist/index.html missing"
    touch "$OHIF_DIR/.complete"
    echo "viewers: OHIF $OHIF_VERSION in $OHIF_DIR ($(du -sh "$OHIF_DIR" | cut -f1))"
fi
ln -sfn "$OHIF_VERSION" .cache/ohif/current

/usr/bin/chromium --version >/dev/null 2>&1 || fail "/usr/bin/chromium does not run"
for plugin in libOrthancDicomWeb.so libOrthancWebViewer.so; do
    [[ -e /usr/share/orthanc/plugins/$plugin ]] || fail "Orthanc plugin $plugin not found"
done
deb_mb=$(dpkg-query -W -f='${Installed-Size}\n' "${DEB_PACKAGES[@]}" chromium-common 2>/dev/null \
    | awk '{s += $1} END {print int(s / 1024)}')
pw_dir=$(.venv/bin/python -c "import playwright, os; print(os.path.dirname(playwright.__file__))")
echo "viewers: ready in $(( $(date +%s) - start )) s (OHIF $OHIF_VERSION, playwright $PLAYWRIGHT_VERSION);" \
     "disk: OHIF $(du -sh "$OHIF_DIR" | cut -f1), playwright $(du -sh "$pw_dir" | cut -f1)," \
     "Debian packages ${deb_mb} MB (${DEB_PACKAGES[*]} chromium-common)"
