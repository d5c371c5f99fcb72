#!/usr/bin/env bash
# The local chain end to end, on a fresh machine (as root):
# a loop-mounted btrfs image, a few hundred realistic operations, verify,
# a time-travel read, a diff, a rollback, and a tamper that verify catches.
set -euo pipefail
cd "$(dirname "$0")/.."

MNT=${FSCHAIN_DEMO_DIR:-/mnt/fschain-demo}
IMG=${FSCHAIN_DEMO_IMAGE:-/var/tmp/fschain-demo.img}
OPS=${FSCHAIN_DEMO_OPS:-tests/data/ops-sample.jsonl}

if ! command -v mkfs.btrfs >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq btrfs-progs
fi
cargo build --release --locked -q
fschain() { ./target/release/fschain "$@"; }
step() { printf '\n\033[1m$ fschain %s\033[0m\n' "$*"; fschain "$@"; }

# Start clean: a previous demo's mount and image go.
if mountpoint -q "$MNT"; then umount "$MNT"; fi
rm -f "$IMG"

step init --root "$MNT" --chain host1 --image "$IMG" --size 2G
head -n 400 "$OPS" > /tmp/fschain-demo-ops.jsonl
step apply --root "$MNT" --block-ops 100 /tmp/fschain-demo-ops.jsonl
step log --root "$MNT"
step verify --root "$MNT"
step show --root "$MNT" iface:eth0
step show --root "$MNT" iface:eth0 --at 1
step history --root "$MNT" iface:eth0
step set --root "$MNT" iface:eth0 mtu=9000 --reason "jumbo frames for the storage VLAN"
step diff --root "$MNT" head~1
step rollback --root "$MNT" head~1 --reason "jumbo frames broke the overlay"
step show --root "$MNT" iface:eth0
step verify --root "$MNT"

printf '\n\033[1m# someone edits a sealed snapshot behind fschain'"'"'s back\033[0m\n'
snap="$MNT/blocks/0000000002"
btrfs property set -ts "$snap" ro false
sed -i 's/"mtu":[0-9]*/"mtu":1/' "$snap/states/iface/eth0"
btrfs property set -ts "$snap" ro true
printf '\033[1m$ fschain verify --root %s\033[0m\n' "$MNT"
if fschain verify --root "$MNT"; then
  echo "verify missed the change" >&2
  exit 1
fi
echo
echo "demo done: the chain is at $MNT (image $IMG); umount $MNT to drop it"
