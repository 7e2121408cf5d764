# Sourced by hosts.sh: test hosts that are virtual machines. An arm64 host whose userland runs
# under qemu-user cannot start containers (runc's init under qemu-user), so a host that must run
# a kubelet is an arm64 machine of its own: Debian's arm64 kernel and initrd booted by
# qemu-system-aarch64 (software emulation), its root an ext4 disk made from the same debootstrap
# root filesystem, plugged into the hosts' bridge by a tap link. A real kernel of its own:
# cgroup v2, loadable modules, IP_VS — unlike the containers, which share this machine's.
#
# Each VM's disk is a sparse copy of the cached one (a power loss kills qemu, whose writes are
# in this machine's page cache already), kept across stop/start like a container's overlay.

# Bumped whenever the VM image's contents change (customize_vm_rootfs, the kernel package).
VM_REVISION=1
VM_DISK_SIZE=16G
VM_MEMORY_MIB=${KILN_E2E_VM_MEMORY_MIB:-2560}
VM_CPUS=2

# Keyed by the root filesystem it is made from too, so a new one makes a new image.
vm_image_dir() { printf '%s/vm-%s-%s-r%s.%s' "$CACHE" "$1" "$2" "$ROOTFS_REVISION" "$VM_REVISION"; } # OS ARCH

vm_qemu() { # ARCH
  case $1 in
    arm64) echo qemu-system-aarch64 ;;
    *) die "no virtual machine for $1 hosts (arm64 only)" ;;
  esac
}

# Builds (once) the VM's kernel, initrd and disk image for OS/ARCH, with the harness's key: the
# container hosts' root filesystem (cached) plus Debian's kernel, whose initrd holds only what
# this VM boots from (mkinitramfs's default, every storage module, takes long under qemu-user).
ensure_vm_image() { # OS ARCH
  local os=$1 arch=$2 dir qemu
  dir=$(vm_image_dir "$os" "$arch")
  qemu=$(vm_qemu "$arch")
  command -v "$qemu" >/dev/null && command -v mkfs.ext4 >/dev/null ||
    die "$qemu is missing (install qemu-system-arm and e2fsprogs)"
  exec 8>"$CACHE/.lock-vm-$os-$arch"
  flock 8
  if [ ! -f "$dir/.complete" ] || ! cmp -s "$dir/authorized_key" "$KEY.pub"; then
    ensure_rootfs "$os" "$arch"
    ensure_binfmt
    rm -rf "$dir"
    mkdir -p "$dir"
    local tmp t0=$SECONDS
    tmp=$(mktemp -d "$CACHE/build-vm-$os-$arch.XXXX")
    log "Creating the $os/$arch virtual machine image (cached in $dir)..."
    cp -a "$(rootfs_dir "$os" "$arch")/." "$tmp/"
    rm -f "$tmp/.complete"
    if ! (set -e; install_vm_kernel "$tmp" "$arch"; customize_vm_rootfs "$tmp") >"$tmp.log" 2>&1; then
      tail -20 "$tmp.log" >&2
      rm -rf "$tmp"
      die "making the $os/$arch virtual machine image failed (log: $tmp.log)"
    fi
    cp "$(ls "$tmp"/boot/vmlinuz-* | sort -V | tail -1)" "$dir/vmlinuz"
    cp "$(ls "$tmp"/boot/initrd.img-* | sort -V | tail -1)" "$dir/initrd.img"
    mkfs.ext4 -q -L kiln-root -d "$tmp" "$dir/disk.img" "$VM_DISK_SIZE" >/dev/null
    cp "$KEY.pub" "$dir/authorized_key"
    rm -rf "$tmp" "$tmp.log"
    touch "$dir/.complete"
    log "Created $dir in $((SECONDS - t0))s"
    prune_cache "vm-$os-$arch-r" "$dir"
  fi
  flock -u 8
}

# Debian's kernel from the mirror, with an initrd that loads the virtio disk and ext4.
install_vm_kernel() { # DIR ARCH
  local r=$1 arch=$2
  mkdir -p "$r/etc/initramfs-tools/conf.d" "$r/etc/initramfs-tools/hooks"
  printf 'MODULES=list\n' > "$r/etc/initramfs-tools/conf.d/kiln-e2e"
  cat > "$r/etc/initramfs-tools/hooks/kiln-e2e" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk ext4; do force_load "$m"; done
HOOK
  chmod 0755 "$r/etc/initramfs-tools/hooks/kiln-e2e"
  # The mirror by name while the kernel is installed; the image keeps its own resolv.conf.
  [ ! -e "$r/etc/resolv.conf" ] || mv "$r/etc/resolv.conf" "$r/etc/resolv.conf.kiln-e2e"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  mount -t proc proc "$r/proc"
  local rc=0
  chroot "$r" sh -ec "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-image-$arch" || rc=$?
  umount "$r/proc"
  rm -f "$r/etc/resolv.conf"
  [ ! -e "$r/etc/resolv.conf.kiln-e2e" ] || mv "$r/etc/resolv.conf.kiln-e2e" "$r/etc/resolv.conf"
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  return "$rc"
}

# What a VM needs beyond a container host's root: its own disk in fstab, its network from the
# kernel command line (systemd-network-generator reads `ip=`, systemd-networkd applies it), its
# name in /etc/hosts, and the harness's key baked in (a container's is written at each boot).
customize_vm_rootfs() { # DIR
  local r=$1
  printf 'LABEL=kiln-root / ext4 defaults,errors=remount-ro 0 1\n' > "$r/etc/fstab"
  rm -f "$r/etc/systemd/system/systemd-networkd.service"
  chroot "$r" systemctl enable systemd-networkd.service systemd-network-generator.service >/dev/null
  cat > "$r/etc/systemd/system/kiln-e2e-hosts.service" <<'UNIT'
[Unit]
Description=The host's own name in /etc/hosts (kiln e2e)
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'grep -q "[[:space:]]$(hostname)$" /etc/hosts || printf "127.0.1.1\\t%%s\\n" "$(hostname)" >> /etc/hosts'
[Install]
WantedBy=multi-user.target
UNIT
  chroot "$r" systemctl enable kiln-e2e-hosts.service >/dev/null
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
  install_keys "$r"
}

# Every host's tap link on the hosts' bridge (named like a container's veth, so partition and
# heal work the same).
ensure_tap() { # NAME
  local tap; tap=$(host_veth "$1")
  ip link show "$tap" >/dev/null 2>&1 || ip tuntap add dev "$tap" mode tap
  ip link set "$tap" master "$BRIDGE" up
}

vm_mac() { # IP: a locally administered MAC from the address
  local a b c d
  IFS=. read -r a b c d <<< "$1"
  printf '52:54:%02x:%02x:%02x:%02x' "$a" "$b" "$c" "$d"
}

boot_vm() { # NAME
  local name=$1 d os arch ip image
  d=$(host_dir "$name")
  os=$(host_field "$name" os)
  arch=$(host_field "$name" arch)
  ip=$(host_field "$name" ip)
  image=$(vm_image_dir "$os" "$arch")
  mkdir -p "$d"
  [ -f "$d/disk.img" ] || cp --sparse=always "$image/disk.img" "$d/disk.img"
  ensure_tap "$name"
  # Every instruction of the VM is emulated: it gets a larger share of this machine's CPU than
  # each container host's processes, or its kubelet starves while the others are busy.
  setsid nice -n -10 "$(vm_qemu "$arch")" -M virt -cpu cortex-a72 -smp "$VM_CPUS" -m "$VM_MEMORY_MIB" \
    -nodefaults -no-user-config -display none -serial "file:$d/console.log" \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "root=LABEL=kiln-root rw console=ttyAMA0 net.ifnames=0 systemd.hostname=$name ip=$ip::$GATEWAY:255.255.255.0::eth0:off" \
    -drive "file=$d/disk.img,if=none,id=disk,format=raw,discard=unmap" -device virtio-blk-pci,drive=disk \
    -netdev "tap,id=net,ifname=$(host_veth "$name"),script=no,downscript=no" \
    -device "virtio-net-pci,netdev=net,mac=$(vm_mac "$ip")" -device virtio-rng-pci \
    </dev/null >"$d/qemu.log" 2>&1 &
  echo $! > "$d/pid"
}
