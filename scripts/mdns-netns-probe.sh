#!/usr/bin/env bash
# mDNS discovery between two network namespaces, without touching the machine's own interfaces.
#
# Creates two namespaces joined by one veth pair (10.231.0.1/24 <-> 10.231.0.2/24), runs the
# spore-net `mdns_probe` example in each, and checks that each one discovers the other. Every
# multicast packet stays on that veth pair. Needs root and iproute2; cleans up on exit.
#
#   scripts/mdns-netns-probe.sh [PROBE_BINARY] [-- extra probe args]
#
# PROBE_BINARY defaults to target/debug/examples/mdns_probe (built with
# `cargo build -p spore-net --example mdns_probe`).
set -euo pipefail

probe=${1:-target/debug/examples/mdns_probe}
shift || true
[ "${1:-}" = "--" ] && shift
[ "$(id -u)" = 0 ] || { echo "skipping: needs root" >&2; exit 0; }
command -v ip >/dev/null || { echo "skipping: no 'ip' (apt-get install iproute2)" >&2; exit 0; }
[ -x "$probe" ] || { echo "no probe binary at $probe" >&2; exit 2; }

a="spore-probe-a-$$"
b="spore-probe-b-$$"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$a"
ip netns add "$b"
# Created inside $a, its peer moved straight into $b: neither end ever exists on the host.
ip -n "$a" link add veth0 type veth peer name veth0 netns "$b"
ip -n "$a" addr add 10.231.0.1/24 dev veth0
ip -n "$b" addr add 10.231.0.2/24 dev veth0
for ns in "$a" "$b"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set veth0 up
done
# mDNS only uses interfaces whose operational state is UP (and rescans every 5 s): wait for it.
for ns in "$a" "$b"; do
    for _ in $(seq 50); do
        ip -n "$ns" -br link show veth0 | grep -qw UP && break
        sleep 0.1
    done
done

out_a=$(mktemp)
out_b=$(mktemp)
ip netns exec "$a" "$probe" --seconds 8 --expect 1 "$@" >"$out_a" 2>&1 &
pids+=($!)
ip netns exec "$b" "$probe" --seconds 8 --expect 1 "$@" >"$out_b" 2>&1 &
pids+=($!)
status=0
wait "${pids[0]}" || status=1
wait "${pids[1]}" || status=1
pids=()
echo "== namespace A"; cat "$out_a"
echo "== namespace B"; cat "$out_b"
rm -f "$out_a" "$out_b"
if [ "$status" = 0 ]; then echo "mdns probe: both namespaces found each other"; fi
exit "$status"
