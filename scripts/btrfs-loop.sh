#!/usr/bin/env bash
# A loop-mounted btrfs filesystem for tests, demos and benchmarks.
#
#   scripts/btrfs-loop.sh up   [MOUNTPOINT] [SIZE]   # default /mnt/fschain-test, 8G (sparse)
#   scripts/btrfs-loop.sh down [MOUNTPOINT]
#
# Needs root (loop devices, mount) and btrfs-progs. Prints the mountpoint.
set -euo pipefail

cmd=${1:-up}
mnt=${2:-/mnt/fschain-test}
size=${3:-8G}
img=${FSCHAIN_TEST_IMAGE:-/var/tmp/$(basename "$mnt").img}

is_btrfs() { [ -d "$1" ] && [ "$(stat -f -c %T "$1")" = btrfs ]; }

case "$cmd" in
  up)
    if is_btrfs "$mnt"; then echo "$mnt"; exit 0; fi
    if ! command -v mkfs.btrfs >/dev/null; then
      echo "btrfs-progs missing; installing it" >&2
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq btrfs-progs >&2
    fi
    [ "$(id -u)" = 0 ] || { echo "btrfs-loop.sh: needs root (loop devices and mount)" >&2; exit 1; }
    mkdir -p "$(dirname "$img")" "$mnt"
    rm -f "$img"
    truncate -s "$size" "$img"
    mkfs.btrfs -q -f "$img" >&2
    mount -o loop "$img" "$mnt"
    echo "$mnt"
    ;;
  down)
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
    rm -f "$img"
    ;;
  *)
    echo "usage: $0 up|down [MOUNTPOINT] [SIZE]" >&2
    exit 2
    ;;
esac
