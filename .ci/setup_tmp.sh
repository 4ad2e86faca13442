#!/usr/bin/env bash
# CI: on a fresh machine, install and start what the tests need, then run README's test command.
# On a machine where the engine runs and the images exist, it goes straight to the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

# Tools the image builder and the tests use, from Debian's packages.
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # the unit tests verify the units it writes
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

bash .ci/engine.sh
echo "engine ready after $(( $(date +%s) - start ))s"

make venv
.venv/bin/python tests/images/build.py >/dev/null
echo "images ready after $(( $(date +%s) - start ))s"

# README's test command.
