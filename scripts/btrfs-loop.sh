#!/usr/bin/env bash
# A loop-mounted btrfs filesystem for tests, demos and benchmarks.
#
#   scripts/btrfs-loop.sh up   [MOUNTPOINT] [SIZE]   # default /mnt/fschain-test, 8G
#   scripts/btrfs-loop.sh down [MOUNTPOINT]
#
# The image is allocated in full up front (fallocate) and mounted without
# discard, so it never grows afterwards: a sparse image on a host disk that
# fills up makes the loop device fail writes, and btrfs then aborts its
# transaction with EIO and turns read-only in the middle of a test. Here a
# host without room fails at once, with a message that says so.
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
    if ! fallocate -l "$size" "$img"; then
      rm -f "$img"
      echo "btrfs-loop.sh: no room for a $size image at $img ($(df -h --output=avail "$(dirname "$img")" | tail -1 | tr -d ' ') free there); free some disk, or set FSCHAIN_TEST_IMAGE to a path on a larger disk" >&2
      exit 1
    fi
    mkfs.btrfs -q -f "$img" >&2
    mount -o loop,nodiscard "$img" "$mnt"
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
