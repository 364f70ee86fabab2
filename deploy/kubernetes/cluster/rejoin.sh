#!/bin/sh
# rejoin.sh SELF PORT NODES_CONF PEER...
#
# Run in the background as a cluster node starts. nodes.conf keeps each node's last known address,
# and pods come back with new IPs: a pod restarted alone is found again through its own gossip, but
# when every pod restarts at once (a node pool replaced, a power cut) every address in every
# nodes.conf is stale and the nodes no longer find each other. So, once this node answers, it is
# introduced to each peer at the peer's current address (CLUSTER MEET): a node that meets a known
# node ID at a new address takes the new address, and the cluster forms again as it was, slots,
# replicas and data included.
#
# SELF is this node's address or host name (the pod's own name resolves to its IP through
# /etc/hosts), PORT its client port (the bus is PORT + 10000),
# NODES_CONF its cluster-config-file, each PEER a host name or IPv4 address of another node, with
# `:<port>` when its port is not PORT (names are resolved now; one that does not resolve yet is
# skipped: that pod meets this one when it starts). A node whose nodes.conf names no other node is left alone: a fresh node must stay empty
# for `redis-cli --cluster create` (cluster-create.yaml). Never fails the pod: every step may fail.
set -u
port=$2
conf=$3
cli=${REDIS_CLI:-redis-cli}

# An IPv4 address as it is, a name resolved (empty when it does not resolve).
address() {
  case "$1" in
    *[!0-9.]*) getent hosts "$1" | awk '{ print $1; exit }' ;;
    *) echo "$1" ;;
  esac
}
self=$(address "$1")
[ -n "$self" ] || exit 0
shift 3

grep -E '^[0-9a-f]{40} ' "$conf" 2>/dev/null | grep -q -v ' myself,' || exit 0

# Loading a large AOF can take minutes; PING answers with an error until it is done.
tries=0
until "$cli" -h "$self" -p "$port" -e PING >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 1800 ] || exit 0
  sleep 1
done

for peer in "$@"; do
  host=${peer%:*}
  peer_port=${peer##*:}
  [ "$host" != "$peer" ] || peer_port=$port
  ip=$(address "$host")
  [ -n "$ip" ] || continue
  [ "$ip:$peer_port" != "$self:$port" ] || continue
  "$cli" -h "$self" -p "$port" CLUSTER MEET "$ip" "$peer_port" >/dev/null 2>&1 || true
done
exit 0
