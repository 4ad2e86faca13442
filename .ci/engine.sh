#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock: install Debian's engine if it is
# missing, start it in the background if it is not running, and wait (bounded) until it answers.
set -euo pipefail

if docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "installing the Docker engine (Debian's docker.io)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker.io containerd runc iptables >/dev/null
fi
echo "starting dockerd"
setsid dockerd --host unix:///var/run/docker.sock >/var/log/dockerd.log 2>&1 < /dev/null &
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        echo "dockerd answers"
        exit 0
    fi
    sleep 1
done
echo "dockerd did not answer within 60s; its log:" >&2
tail -n 30 /var/log/dockerd.log >&2
exit 1
