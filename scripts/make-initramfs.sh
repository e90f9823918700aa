#!/usr/bin/env bash
# make-initramfs.sh OUT SCRIPT: a tiny initramfs (static busybox + virtio modules) whose /init loads
# the modules, runs SCRIPT (a busybox sh script) and powers the guest off.
set -euo pipefail
out=$1
script=$2
kver=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,sbin,proc,sys,dev,tmp,mnt,lib/modules}
cp /bin/busybox "$work/bin/busybox"
for applet in $("$work/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$work/bin/$applet"
done
mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover
virtio_net virtio-rng crc16 mbcache jbd2 crc32c_generic libcrc32c ext4"
for m in $mods; do
  f=$(find "/lib/modules/$kver" -name "$m.ko*" | head -1)
  [ -n "$f" ] || continue
  case "$f" in
    *.xz) xz -dc "$f" >"$work/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$work/lib/modules/$m.ko" ;;
    *) cp "$f" "$work/lib/modules/$m.ko" ;;
  esac
done
cat >"$work/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net virtio-rng crc16 mbcache jbd2 crc32c_generic libcrc32c ext4; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
echo "GUEST-BOOTED"
sh /test.sh
echo "GUEST-TEST-EXIT $?"
poweroff -f
INIT
chmod +x "$work/init"
cp "$script" "$work/test.sh"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
