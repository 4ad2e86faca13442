#!/bin/bash
# The VM's "boot": start its Docker engine and sshd (as a VM's init would), then idle.
# Restarting the container is a reboot: the engine starts again, containers with a restart
# policy come back, and whatever runs the agent at boot runs it again.
set -euo pipefail
rm -f /var/run/docker.pid /run/docker/containerd/containerd.pid /run/sshd.pid
# DOCKERD_ARGS: e.g. --insecure-registry for the test registry on the host.
# shellcheck disable=SC2086  # word splitting of DOCKERD_ARGS is wanted
dockerd --host unix:///var/run/docker.sock ${DOCKERD_ARGS:-} >/var/log/dockerd.log 2>&1 &
# Host keys of this VM's own, made at first boot (and kept across reboots), as cloud-init does.
ssh-keygen -A >/dev/null
mkdir -p /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
done
if [ -x /etc/boot.sh ]; then
    /etc/boot.sh >/var/log/boot.log 2>&1 &
fi
exec sleep infinity
