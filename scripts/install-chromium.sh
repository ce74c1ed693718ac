#!/usr/bin/env bash
# Install what the UI tests need from Debian: Chromium (headless browser tests) and FFmpeg
# (Gradio's streaming audio player encodes chunks with it). Installs only what is missing.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)

if [ ${#missing[@]} -eq 0 ]; then
    echo "chromium and ffmpeg already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core
/usr/bin/chromium --version
ffmpeg -hide_banner -version | head -1
