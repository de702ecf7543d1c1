#!/usr/bin/env bash
# Installs the host packages the lab needs, only where they are missing.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
      pkg-config mmdebstrap cpio kmod genisoimage e2fsprogs libxml2-utils gcc python3-venv python3-dev
      fdisk chromium makedumpfile   # makedumpfile: the host reads each vmcore (lab/vmcore.py); fdisk: sfdisk partitions the disk-bootable image; chromium: the HTML report is checked in a real headless browser
      gpgv gpg gpg-agent            # gpgv checks signed checksum files (lab/checksums.py); gpg dearmors RPM-GPG-KEY files and, with its agent, makes the tests' throwaway keys
      openssh-server)               # only its sshd binary: tests start their own, on loopback, to reach libvirtd over qemu+ssh (tests/loopback_sshd.py)
# The distributions' image-signing keyrings that images/catalog.toml names (checksum_keyring): in
# Debian's main from trixie on; on bookworm only in bookworm-backports (see keyring_from_backports).
keyrings=(ubuntu-keyring distribution-gpg-keys)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${pkgs[@]}" "${keyrings[@]}"; do
  installed "$p" || missing+=("$p")
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
if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
  # No system sshd from the package, now or at a later boot or upgrade: Debian's init script, its
  # systemd units and its runit service all skip sshd while this file exists (its purge removes it).
  mkdir -p /etc/ssh && touch /etc/ssh/sshd_not_to_be_run
fi
apt-get update -qq
from_apt=() backports=()
for p in "${missing[@]}"; do
  if [[ " ${keyrings[*]} " == *" $p "* ]] && ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
    backports+=("$p")
  else
    from_apt+=("$p")
  fi
done
if [ ${#from_apt[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${from_apt[@]}" >/dev/null
fi

# Fetches the packages from this release's -backports with apt in a scratch folder (its own sources,
# lists and cache; the Release file checked against Debian's archive keyring, as apt always does),
# then installs the .debs: the host's apt sources stay as they are. Both keyrings depend on nothing.
keyring_from_backports() (
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/sources.list.d" "$scratch/lists/partial" "$scratch/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian} ${codename}-backports main" >"$scratch/sources.list"
  opts=(-q -o "Dir::Etc::SourceList=$scratch/sources.list" -o "Dir::Etc::SourceParts=$scratch/sources.list.d"
        -o "Dir::State::Lists=$scratch/lists" -o "Dir::Cache=$scratch/cache" -o Debug::NoLocking=true
        -o APT::Sandbox::User=root)
  if [ -z "$codename" ] || ! apt-get "${opts[@]}" update >/dev/null 2>&1 \
     || ! (cd "$scratch" && apt-get "${opts[@]}" download "$@" >/dev/null 2>&1); then
    echo "host-setup: $* not found in apt's sources nor in ${codename:-this release}-backports; install them by hand" >&2
    exit 1
  fi
  apt-get install -y -qq --no-install-recommends "$scratch"/*.deb >/dev/null
)
if [ ${#backports[@]} -gt 0 ]; then
  keyring_from_backports "${backports[@]}"
fi
