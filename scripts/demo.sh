#!/usr/bin/env bash
# The whole pipeline on one machine, on a fresh machine (as root): Apache
# Kafka on loopback (scripts/kafka.sh), a producer chain on a
# loop-mounted btrfs, operations published to the ops topic and applied by
# the agent, and two sites that receive, verify and hold the same chain;
# then a watch of a file tree and of a network namespace's sysctls, a
# drift and a restore; then interfaces in that namespace and Open vSwitch
# ports on a bridge (an ovsdb-server of its own), and a site answering
# "who moved vnet3 to VLAN 20" with a proof.
# scripts/demo-local.sh shows the local chain alone (time travel, rollback,
# a tamper that verify catches).
set -euo pipefail
cd "$(dirname "$0")/.."

MNT=${FSCHAIN_DEMO_DIR:-/mnt/fschain-demo}
OPS=${FSCHAIN_DEMO_OPS:-tests/data/ops-sample.jsonl}
PORT=${FSCHAIN_DEMO_PORT:-19592}
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
command -v mkfs.btrfs >/dev/null || missing+=(btrfs-progs)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v ovsdb-server >/dev/null || missing+=(openvswitch-switch)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cargo build --release --locked -q
fschain() { ./target/release/fschain "$@"; }
step() { printf '\n\033[1m$ fschain %s\033[0m\n' "$*"; fschain "$@"; }

BROKERS=$(scripts/kafka.sh up --port "$PORT")
NS=fschain-demo-$$
trap 'scripts/kafka.sh down --port "$PORT"; ip netns del "$NS" 2>/dev/null || true
      [ -f "$MNT/ovs/pid" ] && kill "$(cat "$MNT/ovs/pid")" 2>/dev/null || true' EXIT
K=(--brokers "$BROKERS" --prefix "demo$$")

# A clean btrfs for the producer and both sites.
scripts/btrfs-loop.sh down "$MNT" >/dev/null 2>&1 || true
MNT=$(scripts/btrfs-loop.sh up "$MNT" 2G)
step init --root "$MNT/producer" --chain host1
step topics create "${K[@]}"
fschain key show --root "$MNT/producer" > "$MNT/producer.pub"

printf '\n\033[1m# operations go to the ops topic; the agent applies, seals and publishes them\033[0m\n'
head -n 300 "$OPS" > /tmp/fschain-demo-ops.jsonl
step submit --chain host1 "${K[@]}" /tmp/fschain-demo-ops.jsonl
step agent --root "$MNT/producer" --block-ops 50 --until-idle "${K[@]}"
step consume --site east --root "$MNT/east" --trust "$MNT/producer.pub" --until-idle "${K[@]}"
step consume --site west --root "$MNT/west" --trust "$MNT/producer.pub" --until-idle "${K[@]}"
step verify --root "$MNT/east/host1"
step verify --root "$MNT/west/host1"
step show --root "$MNT/west/host1" iface:eth0 --at 2
printf '\n\033[1m# each site indexed the events it verified (BM25 in qdrant-edge, in process)\033[0m\n'
step search --root "$MNT/east" "jumbo frames storage network" --limit 3
step search --root "$MNT/east" "who disabled password login for ssh" --limit 1 --at 4 --proof

printf '\n\033[1m# fschain watches the host itself: a tree of files (a secret among them)\033[0m\n'
W="$MNT/watched"
mkdir -p "$W/ssh"
printf 'PermitRootLogin yes\n' > "$W/ssh/sshd_config"
printf 'demo-private-key\n' > "$W/ssh/ssh_host_ed25519_key"
printf '[files]\npaths = ["%s"]\n' "$W" > "$MNT/files.toml"
./target/release/fschain watch --root "$MNT/producer" --sources "$MNT/files.toml" --block-interval 200 "${K[@]}" &
WATCH=$!
sleep 2
sed -i 's/yes/no/' "$W/ssh/sshd_config"
chmod 600 "$W/ssh/sshd_config"
mkdir "$W/sudoers.d" && printf 'deploy ALL=(ALL) NOPASSWD: ALL\n' > "$W/sudoers.d/deploy"
sleep 2
kill -TERM "$WATCH" && wait "$WATCH"
step history --root "$MNT/producer" "file:$W/ssh/sshd_config"
step consume --site east --root "$MNT/east" --trust "$MNT/producer.pub" --until-idle "${K[@]}"
step consume --site west --root "$MNT/west" --trust "$MNT/producer.pub" --until-idle "${K[@]}"
printf 'PermitRootLogin prohibit-password\n' > "$W/ssh/sshd_config"
step drift --root "$MNT/producer" --sources "$MNT/files.toml" || true
step restore --root "$MNT/producer" --sources "$MNT/files.toml" "file:$W/ssh/sshd_config"
step drift --root "$MNT/producer" --sources "$MNT/files.toml"

printf '\n\033[1m# and the sysctls of a network namespace, private to it\033[0m\n'
ip netns add "$NS"
printf '[sysctl]\nkeys = ["net.ipv4.ip_forward", "net.ipv4.conf.*.rp_filter"]\n' > "$MNT/sysctl.toml"
ip netns exec "$NS" ./target/release/fschain watch --root "$MNT/producer" --sources "$MNT/sysctl.toml" --once
ip netns exec "$NS" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$NS" ./target/release/fschain drift --root "$MNT/producer" --sources "$MNT/sysctl.toml" || true
ip netns exec "$NS" ./target/release/fschain watch --root "$MNT/producer" --sources "$MNT/sysctl.toml" --once

printf '\n\033[1m# and the network: interfaces in that namespace, Open vSwitch ports on a bridge\033[0m\n'
OVS="$MNT/ovs"
mkdir -p "$OVS"
ovsdb-tool create "$OVS/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$OVS/conf.db" --remote=punix:"$OVS/db.sock" --unixctl="$OVS/ctl" \
  --pidfile="$OVS/pid" --log-file="$OVS/log" --no-chdir --detach
vsctl() { ovs-vsctl --db=unix:"$OVS/db.sock" --no-wait "$@"; }
vsctl init
vsctl add-br br0
vsctl add-port br0 vnet3 tag=10 -- set Port vnet3 external_ids:vm-id=vm-42
ip -n "$NS" link add v0 type veth peer name v1
ip -n "$NS" addr add 10.9.0.1/24 dev v0
printf '[interfaces]\nnetns = "%s"\n[ovs]\ndb = "unix:%s/db.sock"\n' "$NS" "$OVS" > "$MNT/network.toml"
SINCE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
./target/release/fschain watch --root "$MNT/producer" --sources "$MNT/network.toml" --block-interval 200 "${K[@]}" &
WATCH=$!
sleep 2
vsctl set Port vnet3 tag=20
ip -n "$NS" link set v0 mtu 1400 up
sleep 2
kill -TERM "$WATCH" && wait "$WATCH"
step history --root "$MNT/producer" ovs-port:br0/vnet3
step drift --root "$MNT/producer" --sources "$MNT/network.toml"
step publish --root "$MNT/producer" "${K[@]}"
step consume --site east --root "$MNT/east" --trust "$MNT/producer.pub" --until-idle "${K[@]}"
step consume --site west --root "$MNT/west" --trust "$MNT/producer.pub" --until-idle "${K[@]}"
step search --root "$MNT/west" "who moved vnet3 to VLAN 20" --since "$SINCE" --limit 1 --proof
if grep -rq demo-private-key "$MNT/producer" "$MNT/east" "$MNT/west"; then
  echo "the secret left the host" >&2
  exit 1
fi

for site in east west; do
  if [ "$(fschain log --root "$MNT/$site/host1" --json)" != "$(fschain log --root "$MNT/producer" --json)" ]; then
    echo "site $site differs from the producer" >&2
    exit 1
  fi
done
echo
echo "demo done: both sites hold the producer's chain, block for block (btrfs at $MNT; scripts/btrfs-loop.sh down $MNT drops it)"
