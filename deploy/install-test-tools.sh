#!/usr/bin/env bash
# Install the independent peers the tests drive: DCMTK's tools and Debian's Chromium.
# Does nothing when they are already there.
set -euo pipefail

missing=()
command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)  # dcmdump: pynetdicom has no such script
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
((${#missing[@]})) || exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "Need ${missing[*]}: run as root or install them with apt-get." >&2
    exit 1
  fi
fi
echo "Installing ${missing[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
