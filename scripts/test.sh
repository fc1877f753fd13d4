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
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider "$@")
if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null && command -v ip >/dev/null \
    && unshare -n true 2>/dev/null; then
    exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "${PYTEST[@]}"
fi
echo "test: not root or no unshare: running on the host network (tests bind 127.0.0.1 only)" >&2
exec "${PYTEST[@]}"
