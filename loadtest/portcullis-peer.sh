#!/usr/bin/env bash
# Starts Portcullis as a load-test peer: one HTTPS listener on 127.0.0.1:PORT serving
# CERT/KEY, every path proxied to the plain-HTTP BACKEND, WORKERS worker threads.
# Used by loadtest/run.sh and as EXTRA_PEER_CMD of ../shared/tools/peers.sh:
#   EXTRA_PEER_CMD='loadtest/portcullis-peer.sh {port} {cert} {key} {backend} {workers} {dir}'
# Runs in the foreground (exec) and logs nothing per request.
set -euo pipefail
port=$1 cert=$2 key=$3 backend=$4 workers=$5 dir=$6
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${PORTCULLIS_BIN:-$here/target/release/portcullis}
mkdir -p "$dir"
rm -rf "$dir/store"
cat >"$dir/portcullis.toml" <<TOML
[store]
dir = "store"
[admin]
listen = "127.0.0.1:0"
[runtime]
worker_threads = $workers
[[listener]]
name = "bench"
bind = ["127.0.0.1:$port"]
max_connections = 100000
[[route]]
hosts = ["*"]
handler = { type = "http_proxy", upstreams = ["$backend"] }
TOML
"$bin" --config "$dir/portcullis.toml" init >/dev/null 2>&1
"$bin" --config "$dir/portcullis.toml" cert import "$cert" "$key" --name bench >/dev/null 2>&1
"$bin" --config "$dir/portcullis.toml" cert set-default bench >/dev/null 2>&1
RUST_LOG=warn exec "$bin" --config "$dir/portcullis.toml" run 2>"$dir/portcullis.log"
