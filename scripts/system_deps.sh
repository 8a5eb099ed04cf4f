#!/usr/bin/env bash
# The one system package valle-export needs: espeak-ng, for text -> IPA (the phonemizer backend).
set -euo pipefail
if ! command -v espeak-ng >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q espeak-ng >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q espeak-ng >/dev/null; }
fi
