#!/usr/bin/env bash
# Install what the tests need from Debian, only what is missing: Chromium (headless browser tests),
# FFmpeg (Gradio's streaming audio player encodes chunks with it) and HAProxy (the balancer in
# front of service replicas, `make serve-replicas`).
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)

if [ ${#missing[@]} -eq 0 ]; then
    echo "chromium, ffmpeg and haproxy already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
