#!/usr/bin/env bash
# System packages the project needs beyond Python 3.11: headers to build mysqlclient, a JDK for
# TorchServe, Chromium + ChromeDriver for the browser tests, nginx for the scale benchmark (bench/scale.py
# runs its own in the foreground on spare ports; where apt also starts the distribution's service on
# port 80, stop and disable that one). Idempotent: installs only what is missing (apt, as root or
# through sudo); prints what to install and fails where it cannot.
# Used by `make setup` and by .ci/run, so a fresh machine needs no manual step.
set -euo pipefail

packages=(default-libmysqlclient-dev pkg-config build-essential chromium chromium-driver nginx)
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)

missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install the equivalents of: ${missing[*]}" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "system-deps: run as root (or install sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q || true
"${sudo[@]}" apt-get install -y -q "${missing[@]}"
