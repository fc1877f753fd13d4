#!/usr/bin/env bash
# Set up everything taviseg needs on a Debian machine: system peers (Orthanc PACS, dcmtk,
# dicom3tools, PostgreSQL) when missing, and the Python environment in .venv.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SYSTEM_PACKAGES=(orthanc dcmtk dicom3tools postgresql)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing system packages: ${missing[*]}"
        apt-get update -qq
        # Do not let Debian's maintainer scripts start services we run ourselves on private ports.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: warning: missing system packages (${missing[*]}); run as root to install them" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.taviseg-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: installing Python packages (first run downloads PyTorch: several minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
bash scripts/fetch_ct.sh  # the chest CT of the v2 phantom (tavidata.phantom.ct), once
echo "setup: ready (.venv/bin/taviseg)"
bash scripts/viewers.sh || echo "setup: warning: viewer stack incomplete (scripts/viewers.sh said what failed); browser tests will fail" >&2
