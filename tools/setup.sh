#!/usr/bin/env bash
# Set up a fresh machine for medssl: Debian tools (when root), then the Python package.
#   bash tools/setup.sh          runtime only
#   bash tools/setup.sh --dev    + test tools (pytest, dcm2niix, import-linter, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v dcm2niix >/dev/null 2>&1 || need_apt+=(dcm2niix)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
if [ "${1:-}" = "--dev" ] && [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install the Debian packages: ${need_apt[*]} (tests needing them are skipped)" >&2
  fi
fi

# torch first, pinned: on these machines 2.13.0 is a CPU wheel on local disk; an open
# range would pull a multi-GB CUDA build.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--dev" ]; then
  "$PY" -m pip install -q -e ".[dev]"
else
  "$PY" -m pip install -q -e .
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true  # expose the `medssl` command under pyenv
echo "setup: medssl $("$PY" -c 'import medssl; print(medssl.__version__)') ready"
