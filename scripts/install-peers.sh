#!/usr/bin/env bash
# Installs the real peers the interop tests use, from Debian 12's packages (run as root).
set -euo pipefail
need=()
command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-x86 qemu-utils)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v dpdk-testpmd >/dev/null || need+=(dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23)
[ -x /bin/busybox ] || need+=(busybox-static)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
echo "peers: $(command -v qemu-storage-daemon) $(command -v qemu-system-x86_64) $(command -v dpdk-testpmd)"
