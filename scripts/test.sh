#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs). Usage: bash scripts/test.sh [pytest args]
# As root, the suite runs in a private network namespace with only loopback up, so the real
# Orthanc, PostgreSQL and DICOM peers the tests start can be reached from nowhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# setup.sh installed every peer (Orthanc, dcmtk, dicom3tools, PostgreSQL): from here a missing
# one fails its tests instead of skipping them, so a green run means every part ran.
export TAVISEG_REQUIRE_PEERS=1
# The real angiography samples are not part of the repository: the suite reads them from
# $TAVISEG_DICOM_SAMPLES or ../shared/dicom-samples, and refuses to run without them.
SAMPLES=${TAVISEG_DICOM_SAMPLES:-$(cd .. && pwd)/shared/dicom-samples}
if [[ ! -f $SAMPLES/MANIFEST.tsv ]]; then
    echo "test: real DICOM samples not found at $SAMPLES (no MANIFEST.tsv);" \
         "set TAVISEG_DICOM_SAMPLES to their folder" >&2
    exit 2
fi
export TAVISEG_DICOM_SAMPLES=$SAMPLES
# Lint first (pyproject.toml [tool.ruff]: the rules the code follows); a finding fails the run.
.venv/bin/ruff check --quiet . || { echo "test: ruff found the problems above" >&2; exit 1; }
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider "$@")
if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare -n true 2>/dev/null; then
    exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "${PYTEST[@]}"
fi
echo "test: not root or no unshare: running on the host network (tests bind 127.0.0.1 only)" >&2
exec "${PYTEST[@]}"
