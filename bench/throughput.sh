#!/usr/bin/env bash
# Bulk throughput over loopback: spore app stream vs bare quinn vs iperf3 TCP.
# Arguments go to the benchmark, e.g.: bench/throughput.sh --bytes 1G --runs 5
# See crates/spore-net/benches/throughput.rs for all options.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v iperf3 >/dev/null; then
    echo "iperf3 not installed: apt-get install -y iperf3 (the TCP column will be left out)" >&2
fi
exec cargo bench -p spore-net --bench throughput -- "$@"
