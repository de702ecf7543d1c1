#!/usr/bin/env bash
# Builds the default guest offline from Debian's packages: no loop mounts, no network in the guest.
# Usage: LAB_SUITE=CODENAME build.sh OUTDIR   (lab/image.py sets LAB_SUITE from images/releases.toml; writes OUTDIR/disk.qcow2, OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/kernel-version,
#                           and OUTDIR/bootable.qcow2: the same tree on a partitioned disk that boots through grub)
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${LAB_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=${LAB_SUITE:?LAB_SUITE names the Debian release (images/releases.toml)}
rootfs="$out/rootfs"
step() { echo "image: $*" >&2; }

packages=$(grep -v '^#' "$here/packages.txt" | xargs | tr ' ' ,)
# Another kernel (lab/image.py sets these): PACKAGE/SUITE from Debian's archive, or a local .deb, in
# place of linux-image-amd64; the rest of the recipe (kdump initrd, drivers, timers) is the same.
kernel_args=() sources=()
if [ -n "${LAB_KERNEL_INCLUDE:-}" ]; then
  packages=$(echo ",$packages," | sed 's/,linux-image-amd64,/,/; s/^,//; s/,$//')
  kernel_args=(--include="$LAB_KERNEL_INCLUDE")
  case $LAB_KERNEL_INCLUDE in
    /*) kernel_args+=(--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount) ;;
  esac
  [ -n "${LAB_KERNEL_SUITE:-}" ] && sources=("deb $mirror $LAB_KERNEL_SUITE main")
fi
step "mmdebstrap $suite ($packages${LAB_KERNEL_INCLUDE:+, kernel $LAB_KERNEL_INCLUDE})"
mmdebstrap --mode=root --variant=important --quiet \
  --include="$packages" "${kernel_args[@]}" \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --customize-hook="\"$here/customize.sh\" \"\$1\"" \
  "$suite" "$rootfs" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main" "${sources[@]}"

# The lab writes KDUMP_CMDLINE_APPEND out, starting from the release's default (images/releases.toml):
# if the package's own default moved, the table is wrong, and the build says so.
if [ -n "${LAB_KDUMP_APPEND:-}" ] && ! grep -qF "KDUMP_CMDLINE_APPEND:=\"$LAB_KDUMP_APPEND\"}" "$rootfs/usr/sbin/kdump-config"; then
  echo "image: $suite's kdump-config defaults to another KDUMP_CMDLINE_APPEND than images/releases.toml says:" >&2
  grep -m1 'KDUMP_CMDLINE_APPEND:=' "$rootfs/usr/sbin/kdump-config" >&2
  exit 1
fi

version=$(ls "$rootfs/lib/modules")
cp "$rootfs/boot/vmlinuz-$version" "$out/vmlinuz"
cp "$rootfs/boot/initrd.img-$version" "$out/initrd.img"
echo "$version" > "$out/kernel-version"

step "ext4 filesystem from the tree (kernel $version)"
truncate -s 3G "$out/disk.raw"
mkfs.ext4 -q -L labroot -d "$rootfs" "$out/disk.raw"

step "disk-bootable form: MBR, grub, the same tree on partition 1"
# It stands in for a published cloud image, whose getty asks for the user name: no automatic login.
rm "$rootfs/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
truncate -s 3G "$out/bootable.raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$out/bootable.raw"
mkfs.ext4 -q -L labroot -E offset=$((2048 * 512)) -d "$rootfs" "$out/bootable.raw" 3071M
# grub's boot sector (its first 440 bytes: the partition table stays), then its core image behind it.
dd if="$rootfs/usr/lib/grub/i386-pc/boot.img" of="$out/bootable.raw" bs=440 count=1 conv=notrunc status=none
dd if="$rootfs/boot/grub/i386-pc/core.img" of="$out/bootable.raw" bs=512 seek=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$out/bootable.raw" "$out/bootable.qcow2"
chmod 0444 "$out/bootable.qcow2"
rm -f "$out/bootable.raw"

rm -rf "$rootfs"
step "qcow2 base"
qemu-img convert -O qcow2 "$out/disk.raw" "$out/disk.qcow2"
chmod 0444 "$out/disk.qcow2"  # runs write to overlays only
rm -f "$out/disk.raw"
