#!/usr/bin/env bash
# Apache Kafka in KRaft mode on loopback, for tests, demos and benchmarks.
# The broker is the real one (kafka.Kafka and its storage formatter), its
# jars resolved from Maven Central by scripts/kafka/pom.xml (one pinned
# version, cached in ~/.m2). Each node is a combined broker and controller
# with a small heap.
#
#   scripts/kafka.sh up    [--brokers 1|3] [--port P]   start; prints the bootstrap list
#   scripts/kafka.sh down  [--port P]                   stop what `up` started there
#   scripts/kafka.sh kill  N [--port P]                 kill -9 broker N (1-based)
#   scripts/kafka.sh start N [--port P]                 start broker N again
#   scripts/kafka.sh jars                               only fetch the jars
#   scripts/kafka.sh up --secure [--port P]             one broker that requires TLS
#                                                       and SASL/SCRAM-SHA-256
#   scripts/kafka.sh user NAME PASSWORD [--port P]      add a SCRAM user (admin API)
#   scripts/kafka.sh acl [--port P] -- ARGS...          kafka-acls (AclCommand) as admin
#
# --secure makes a CA and the broker's certificate (openssl; a PKCS12
# trust store for Java clients with keytool) in /var/tmp/fschain-kafka-P/tls,
# bootstraps the user admin (password admin-secret, a super user) and
# turns on the standard authorizer with no access unless granted. Clients
# trust tls/ca.pem; admin.properties there is the admin's client config.
#
# --host H (with up) makes the brokers listen on and advertise address H
# instead of 127.0.0.1 (a test's veth address, reachable from a network
# namespace). P is the first broker's port (default 9092); broker N listens on P+N-1
# and its controller on P+N+99. With three brokers the cluster has the
# production settings `fschain topics create` documents: replication
# factor 3, min.insync.replicas 2, no unclean leader election.
# State (data, logs, PIDs) lives in /var/tmp/fschain-kafka-P and is removed
# by `down`. An `up` on a port whose cluster already runs prints its
# bootstrap list and leaves it running ("already running" on stderr).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=4.1.1
libs=${FSCHAIN_KAFKA_LIBS:-/var/tmp/fschain-kafka-$version/libs}
heap=${FSCHAIN_KAFKA_HEAP:-512m}

cmd=${1:-up}
shift || true
brokers=1
port=9092
node=
secure=
host=127.0.0.1
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --brokers) brokers=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --secure) secure=1; shift ;;
        --host) host=$2; shift 2 ;;
        --) shift; args=("$@"); break ;;
        *) if [ "$cmd" = user ]; then args+=("$1"); shift; continue; fi
           case "$1" in
               [0-9]*) node=$1; shift ;;
               *) echo "kafka.sh: unknown argument $1" >&2; exit 2 ;;
           esac ;;
    esac
done
state=/var/tmp/fschain-kafka-$port

jars() {
    # The copy is complete for this very pom.xml (a changed pom resolves again).
    local done_for
    done_for="$libs/.complete-$(sha256sum "$here/kafka/pom.xml" | cut -c1-16)"
    if [ -f "$done_for" ]; then return 0; fi
    echo "kafka.sh: resolving Apache Kafka $version from Maven Central" >&2
    mkdir -p "$libs"
    mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$libs" -DincludeScope=runtime >&2
    rm -f "$libs"/.complete*
    touch "$done_for"
}

# The address the brokers listen on (`up --host`).
host_of() {
    cat "$state/host" 2>/dev/null || echo 127.0.0.1
}

bootstrap() {
    local n list= h
    h=$(host_of)
    for n in $(seq 1 "$(cat "$state/brokers")"); do
        list+="${list:+,}$h:$((port + n - 1))"
    done
    echo "$list"
}

# Alive and not a zombie (a killed broker whose parent is gone may linger
# unreaped in a container whose PID 1 does not reap).
# The PID must also still be this broker's: test suites start thousands
# of processes, and a recycled PID once made a killed broker look alive
# (so it was never started again) and could make `down` kill a stranger.
running() {
    started_alive "$1" &&
        tr '\0' ' ' <"/proc/$(cat "$state/broker-$1.pid")/cmdline" 2>/dev/null |
        grep -q -- "$state/broker-$1.properties"
}

# Whether the process started for broker $1 is still alive. Unlike
# `running`, it does not look for the broker's command line: until the
# forked shell has exec'd java, that is still this script's.
started_alive() {
    local pid
    pid=$(cat "$state/broker-$1.pid" 2>/dev/null) || return 1
    [ -r "/proc/$pid/stat" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

write_config() {
    local n=$1 count=$2 voters= i rf=$2 isr=1
    for i in $(seq 1 "$count"); do
        voters+="${voters:+,}$i@127.0.0.1:$((port + i + 99))"
    done
    if [ "$count" -ge 3 ]; then isr=2; fi
    cat >"$state/broker-$n.properties" <<EOF
node.id=$n
process.roles=broker,controller
listeners=PLAINTEXT://$host:$((port + n - 1)),CONTROLLER://127.0.0.1:$((port + n + 99))
advertised.listeners=PLAINTEXT://$host:$((port + n - 1))
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.voters=$voters
log.dirs=$state/broker-$n/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
group.initial.rebalance.delay.ms=0
message.max.bytes=4194304
replica.fetch.max.bytes=4194304
auto.create.topics.enable=true
log.retention.check.interval.ms=10000
EOF
}

make_tls() {
    local d=$state/tls
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=fschain test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$d/broker.key" -out "$d/broker.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/san.ext"
    openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -days 2 -extfile "$d/san.ext" -out "$d/broker.pem" 2>/dev/null
    # Kafka's PEM key store: the private key (PKCS#8) and its chain.
    openssl pkcs8 -topk8 -nocrypt -in "$d/broker.key" -out "$d/broker.pk8"
    cat "$d/broker.pk8" "$d/broker.pem" "$d/ca.pem" >"$d/broker-keystore.pem"
    keytool -importcert -noprompt -alias ca -file "$d/ca.pem" \
        -keystore "$d/truststore.p12" -storetype PKCS12 -storepass changeit >/dev/null 2>&1
    cat >"$d/admin.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-256
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="admin-secret";
ssl.truststore.type=PKCS12
ssl.truststore.location=$d/truststore.p12
ssl.truststore.password=changeit
EOF
}

secure_config() {
    local d=$state/tls f=$state/broker-1.properties
    sed -i -e "s#^listeners=.*#listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 100))#" \
        -e "s#^advertised.listeners=.*#advertised.listeners=SASL_SSL://127.0.0.1:$port#" \
        -e "s#^inter.broker.listener.name=.*#inter.broker.listener.name=SASL_SSL#" \
        -e "s#^listener.security.protocol.map=.*#listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT#" "$f"
    cat >>"$f" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="admin-secret";
ssl.keystore.type=PEM
ssl.keystore.location=$d/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$d/ca.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
EOF
}

# Runs one of Kafka's own admin tools as the secure broker's admin.
admin_tool() {
    local class=$1
    shift
    java "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties" \
        "-Dfschain.kafka.log=$state/admin.log" -cp "$libs/*" "$class" \
        --bootstrap-server "127.0.0.1:$port" --command-config "$state/tls/admin.properties" "$@"
}

start_node() {
    local n=$1
    mkdir -p "$state/broker-$n"
    nohup java -Xms128m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties" \
        "-Dfschain.kafka.log=$state/broker-$n.log" \
        -cp "$libs/*" kafka.Kafka "$state/broker-$n.properties" \
        >>"$state/broker-$n.out" 2>&1 &
    echo $! >"$state/broker-$n.pid"
}

wait_node() {
    local n=$1
    for _ in $(seq 1 600); do
        if grep -q "Kafka Server started" "$state/broker-$n.log" 2>/dev/null \
            && (exec 3<>"/dev/tcp/$(host_of)/$((port + n - 1))") 2>/dev/null; then
            return 0
        fi
        if ! started_alive "$n"; then
            echo "kafka.sh: broker $n exited; its output:" >&2
            tail -n 40 "$state/broker-$n.out" "$state/broker-$n.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
    echo "kafka.sh: broker $n did not start within 60 s; log $state/broker-$n.log" >&2
    return 1
}

up() {
    if [ -f "$state/brokers" ] && running 1; then
        echo "kafka.sh: already running on port $port" >&2
        bootstrap
        return 0
    fi
    case "$brokers" in 1|3) ;; *) echo "kafka.sh: --brokers is 1 or 3" >&2; exit 2 ;; esac
    jars
    rm -rf "$state"
    mkdir -p "$state"
    echo "$brokers" >"$state/brokers"
    echo "$host" >"$state/host"
    local cluster n scram=()
    if [ -n "$secure" ]; then
        [ "$brokers" = 1 ] || { echo "kafka.sh: --secure runs one broker" >&2; exit 2; }
        make_tls
        scram=(--add-scram 'SCRAM-SHA-256=[name=admin,password=admin-secret]')
    fi
    cluster=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    for n in $(seq 1 "$brokers"); do
        write_config "$n" "$brokers"
        if [ -n "$secure" ]; then secure_config; fi
        java "-Dlog4j2.configurationFile=$here/kafka/log4j2.properties" \
            "-Dfschain.kafka.log=$state/format.log" -cp "$libs/*" \
            kafka.tools.StorageTool format -t "$cluster" -c "$state/broker-$n.properties" \
            "${scram[@]}" >/dev/null
    done
    for n in $(seq 1 "$brokers"); do start_node "$n"; done
    for n in $(seq 1 "$brokers"); do wait_node "$n"; done
    echo "kafka.sh: Apache Kafka $version, $brokers broker(s), logs in $state" >&2
    bootstrap
}

down() {
    [ -d "$state" ] || return 0
    local n
    for n in $(seq 1 "$(cat "$state/brokers" 2>/dev/null || echo 3)"); do
        if running "$n"; then kill "$(cat "$state/broker-$n.pid")" 2>/dev/null || true; fi
    done
    for n in $(seq 1 "$(cat "$state/brokers" 2>/dev/null || echo 3)"); do
        for _ in $(seq 1 100); do
            running "$n" || break
            sleep 0.1
        done
        if running "$n"; then kill -9 "$(cat "$state/broker-$n.pid")" 2>/dev/null || true; fi
    done
    rm -rf "$state"
}

need_node() {
    if [ -z "$node" ] || [ ! -f "$state/broker-$node.properties" ]; then
        echo "kafka.sh: no broker ${node:-?} in the cluster on port $port" >&2
        exit 2
    fi
}

case "$cmd" in
    up) up ;;
    down) down ;;
    jars) jars ;;
    user)
        [ ${#args[@]} -eq 2 ] && [ -f "$state/tls/admin.properties" ] || {
            echo "kafka.sh: user NAME PASSWORD, against a broker started with --secure" >&2; exit 2; }
        admin_tool kafka.admin.ConfigCommand --alter --entity-type users --entity-name "${args[0]}" \
            --add-config "SCRAM-SHA-256=[iterations=4096,password=${args[1]}]" >/dev/null
        ;;
    acl)
        [ -f "$state/tls/admin.properties" ] || {
            echo "kafka.sh: acl needs a broker started with --secure" >&2; exit 2; }
        admin_tool org.apache.kafka.tools.AclCommand "${args[@]}" >/dev/null
        ;;
    kill)
        need_node
        if running "$node"; then kill -9 "$(cat "$state/broker-$node.pid")"; fi
        ;;
    start)
        need_node
        if ! running "$node"; then
            : >"$state/broker-$node.log"
            start_node "$node"
            wait_node "$node"
        fi
        ;;
    *) echo "usage: $0 up|down|kill N|start N|jars|user NAME PASSWORD|acl -- ARGS [--brokers 1|3] [--port P] [--secure]" >&2; exit 2 ;;
esac
