#!/usr/bin/env bash
# mmdebstrap customize hook: runs on the host with the new root as $1.
set -euo pipefail
root=$1
version=$(ls "$root/lib/modules")

echo panic-lab > "$root/etc/hostname"
echo 'LABEL=labroot / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"

# Only the NoCloud seed is looked for: probing other clouds costs minutes under TCG.
# No locale either: the image has no locale data to generate, and the failing locale module made
# every first boot end in "cloud-init status: error" (which also cuts `cloud-init status --wait` short).
cat > "$root/etc/cloud/cloud.cfg.d/90-panic-lab.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
locale: false
CFG
# Boot-to-ready under TCG: each cloud-init stage is a Python start (5-12 s), and each module costs more.
# Only the modules a lab seed uses are left (bootcmd, write_files, runcmd; the seed sets the password
# itself), no network configuration (the offline guest has no network), and no ssh host keys (no sshd).
cat > "$root/etc/cloud/cloud.cfg.d/91-panic-lab-modules.cfg" <<'CFG'
network: {config: disabled}
cloud_init_modules: [bootcmd, write_files]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts_user, final_message]
CFG
# cloud-init >= 24.3 (trixie) runs all its stages in one Python process (cloud-init-main.service), which
# waits for each stage's unit to hand it the go: masking or skipping a stage there would stall the boot.
# Older ones (bullseye, bookworm) start Python once per stage, and those starts are what is cut here.
if [ ! -e "$root/lib/systemd/system/cloud-init-main.service" ]; then
  # The local stage is one more Python start (9-17 s under TCG) that only finds the seed and hands it to
  # the network stage (NoCloud's dsmode is net): that stage finds the seed on its own.
  chroot "$root" systemctl mask cloud-init-local.service >/dev/null
  # The config and final stages are two more Python starts (6-8 s each under TCG, on every boot) whose
  # only modules here run a seed's runcmd: skipped when the seed has none (ExecCondition, systemd >= 243).
  for stage in config final; do
    mkdir -p "$root/etc/systemd/system/cloud-$stage.service.d"
    cat > "$root/etc/systemd/system/cloud-$stage.service.d/only-with-runcmd.conf" <<'UNIT'
[Service]
ExecCondition=/bin/grep -qs ^runcmd: /var/lib/cloud/instance/cloud-config.txt
UNIT
  done
fi
# The guest has no network interface (lo is systemd's own), and cloud-init's first stage waits for
# ifupdown, which waits on udev's coldplug: 10-12 s of every boot under TCG.
chroot "$root" systemctl mask networking.service ifupdown-pre.service >/dev/null

# kdump-tools reads /etc/default/kdump-tools once, early; cloud-init writes it on first boot.
mkdir -p "$root/etc/systemd/system/kdump-tools.service.d"
cat > "$root/etc/systemd/system/kdump-tools.service.d/after-cloud-init.conf" <<'UNIT'
[Unit]
After=cloud-init.service cloud-init-network.service
UNIT

# kdump-tools' own hook cannot build its initrd in a chroot (MODULES=dep needs the real root
# device), so build it here with MODULES=list. The disk drivers of every profile go in through a hook
# (copied, not force-loaded): udev loads them by alias, so a capture kernel's modprobe.blacklist=
# (KB2858695's blacklist line) really keeps a driver out.
kd="$root/var/lib/kdump"
rm -rf "$kd/initramfs-tools"
cp -pr "$root/etc/initramfs-tools" "$kd/initramfs-tools"
echo MODULES=list > "$kd/initramfs-tools/conf.d/zzz-kdump"
echo KDUMP=y >> "$kd/initramfs-tools/initramfs.conf"
mkdir -p "$kd/initramfs-tools/hooks"
cat > "$kd/initramfs-tools/hooks/panic-lab-disks" <<'HOOK'
#!/bin/sh
case $1 in prereqs) echo ""; exit 0;; esac
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_blk virtio_scsi ata_piix ata_generic sd_mod sr_mod ext4 crc32c_generic
HOOK
chmod 0755 "$kd/initramfs-tools/hooks/panic-lab-disks"
# disk_timeout for the capture kernel (kdump-initramfs/): initramfs-tools has no such knob.
for stage in init-top local-bottom; do
  mkdir -p "$kd/initramfs-tools/scripts/$stage"
  install -m 0755 "$(dirname "$0")/kdump-initramfs/$stage/panic-lab-disk-timeout" "$kd/initramfs-tools/scripts/$stage/"
done
chroot "$root" mkinitramfs -d /var/lib/kdump/initramfs-tools -o "/var/lib/kdump/initrd.img-$version" "$version"
# Without this stamp kdump-config rebuilds the initrd on every boot.
cp "$root/etc/kdump/sysctl.conf" "$kd/latest_sysctls-$version"

# The first kernel's own initrd: only the drivers of the lab's disks (every profile's root is on
# virtio-blk; IDE for the Gen1 model's second path), not MODULES=most's 30 MB, which takes seconds to
# unpack and probe under TCG. (The kdump initrd above was made from the configuration before this.)
echo MODULES=list > "$root/etc/initramfs-tools/conf.d/panic-lab-modules"
printf '%s\n' virtio_pci virtio_blk ata_piix ata_generic sd_mod sr_mod ext4 crc32c_generic >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k "$version" >/dev/null
# No KVM inside the guest: udev would load kvm_amd/kvm_intel for the emulated CPU's flags (3 s under TCG).
printf 'blacklist kvm\nblacklist kvm_amd\nblacklist kvm_intel\n' > "$root/etc/modprobe.d/panic-lab-no-kvm.conf"
# Nor drivers for the emulated PC's other parts (floppy, speaker, USB, SMBus, cpufreq, input, SCSI
# generic): udev loads them in the middle of cloud-init's start, 4-5 s under TCG, and no run uses them.
for module in floppy pcspkr uhci_hcd ehci_pci ehci_hcd i2c_piix4 powernow_k8 acpi_cpufreq sg evdev joydev serio_raw; do
  echo "blacklist $module"
done > "$root/etc/modprobe.d/panic-lab-unused-hardware.conf"
# cloud-init's generator runs ds-identify at every boot to decide whether cloud-init runs at all; the
# datasource is fixed (90-panic-lab.cfg), so let it run without the search.
echo 'policy: enabled' > "$root/etc/cloud/ds-identify.cfg"

# Nothing in the guest needs these, and under TCG they steal seconds from every boot.
# kexec-load is kexec-tools' LSB script for kexec reboots (kdump-tools loads the capture kernel itself);
# getty-static starts five more VT gettys when there is no logind.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
            kexec-load.service getty-static.service; do
  chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done

# The lab logs in on the serial console before each run: no motd scripts (run-parts, uname) on the way.
sed -i '/pam_motd/s/^/#/' "$root/etc/pam.d/login"
# And with no password round trip: the serial getty logs root in by itself (`login: root (automatic
# login)`; lab/console.py takes either way). Under TCG the typed login took 4-6 s of every boot
# (login's PAM stack, the password's yescrypt check).
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cat > "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
UNIT
# Early-boot units that share the one vCPU with cloud-init's start and that no run uses: modprobe@
# (fuse, loop, dm_mod, drm, configfs, efi_pstore), the debug/tracing/hugepage/mqueue/fuse/configfs mounts,
# binfmt, static nodes for unloaded modules, pstore (no pstore under QEMU); and, after it, the VT getty,
# cron and rsyslog (the lab reads the journal). The capture kernel of kdump-tools boots this same root
# with its own target, so it is spared them too; nothing of its dump path is among them.
for unit in modprobe@configfs.service modprobe@dm_mod.service modprobe@drm.service modprobe@efi_pstore.service \
            modprobe@fuse.service modprobe@loop.service dev-hugepages.mount dev-mqueue.mount \
            sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount sys-kernel-config.mount \
            proc-sys-fs-binfmt_misc.automount systemd-binfmt.service kmod-static-nodes.service \
            systemd-pstore.service getty@tty1.service cron.service rsyslog.service; do
  chroot "$root" systemctl mask --quiet "$unit"
done

# The disk-bootable form (build.sh writes bootable.qcow2 from this same tree) stands in for a
# published cloud image: BIOS -> grub in the MBR -> the kernel command line from grub's config, which
# the guest's own update-grub rewrites. grub-install needs a block device, so this does its part by
# hand: the modules where grub looks for them, and a core image that finds them on partition 1.
mkdir -p "$root/boot/grub" "$root/etc/default/grub.d"
cp -r "$root/usr/lib/grub/i386-pc" "$root/boot/grub/"
chroot "$root" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2
# What cloud images set: the serial console on the kernel command line, no menu delay, no "quiet".
cat > "$root/etc/default/grub.d/50-cloudimg-settings.cfg" <<'CFG'
GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0,115200"
GRUB_TIMEOUT=0
GRUB_TERMINAL=console
CFG
# The first boot's config, until the guest runs update-grub itself.
cat > "$root/boot/grub/grub.cfg" <<CFG
set timeout=0
menuentry 'Debian GNU/Linux' {
  insmod ext2
  linux /boot/vmlinuz-$version root=LABEL=labroot ro console=tty1 console=ttyS0,115200
  initrd /boot/initrd.img-$version
}
CFG
