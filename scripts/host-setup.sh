#!/usr/bin/env bash
# Installs the host packages the lab needs, only where they are missing.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
      pkg-config mmdebstrap cpio kmod genisoimage e2fsprogs libxml2-utils gcc python3-venv python3-dev
      fdisk chromium makedumpfile   # makedumpfile: the host reads each vmcore (lab/vmcore.py); fdisk: sfdisk partitions the disk-bootable image; chromium: the HTML report is checked in a real headless browser
      gpgv gpg gpg-agent)           # gpgv checks signed checksum files (lab/checksums.py); gpg dearmors RPM-GPG-KEY files and, with its agent, makes the tests' throwaway keys
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "host-setup: missing packages (${missing[*]}); run as root or install them" >&2
  exit 1
fi
echo "host-setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
