#!/usr/bin/env bash
# Makes qemu:///system answer. This kind of machine has no systemd, so nothing else starts the daemons.
set -euo pipefail
uri=${LAB_URI:-qemu:///system}
fix_kvm_node() {
  # Without udev, /dev/kvm stays root-only; libvirt then sees KVM appear and vanish between its own
  # capability checks (probed as libvirt-qemu, checked as root) and re-probes QEMU on every domain
  # start, about 45 s each time. This is udev's own rule for the node: group kvm, mode 0660.
  if [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ] && getent group kvm >/dev/null && [ "$(id -u)" -eq 0 ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    return 0
  fi
  return 1
}
if fix_kvm_node && pgrep -x libvirtd >/dev/null; then
  pkill -x libvirtd   # restarted below, so that it forgets the flapping capabilities
  for _ in $(seq 1 20); do pgrep -x libvirtd >/dev/null || break; sleep 0.5; done
fi
if timeout 10 virsh -q -c "$uri" uri >/dev/null 2>&1; then
  exit 0
fi
if [ "$uri" != qemu:///system ]; then
  echo "start-libvirt: $uri does not answer, and only qemu:///system is started here" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "start-libvirt: qemu:///system does not answer; start libvirtd as root (or set LAB_URI)" >&2
  exit 1
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl start virtlogd.socket libvirtd.socket libvirtd.service
else
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
fi
for _ in $(seq 1 30); do
  timeout 5 virsh -q -c "$uri" uri >/dev/null 2>&1 && { echo "start-libvirt: $uri answers" >&2; exit 0; }
  sleep 1
done
echo "start-libvirt: libvirtd started but $uri still does not answer" >&2
exit 1
