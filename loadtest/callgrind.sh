#!/usr/bin/env bash
# loadtest/callgrind.sh N — instructions (callgrind Ir, repeatable on a shared machine)
# of the proxy for N HTTP/1.1 keep-alive requests on one TLS connection through
# http_proxy to tests/support/backend.py. Per request: (Ir(N) - Ir(1)) / (N - 1).
# MODE=close: each request on a new TLS connection instead (curl resumes the TLS 1.3
# session, so this is a resumed handshake + one proxied request per connection).
# MODE=full: the same without resumption (a full handshake per connection).
#   cargo build --release --bin portcullis
#   loadtest/callgrind.sh 1; loadtest/callgrind.sh 5001
#   MODE=close loadtest/callgrind.sh 1; MODE=close loadtest/callgrind.sh 1001
#   MODE=full loadtest/callgrind.sh 1; MODE=full loadtest/callgrind.sh 501
# Prints the total and the work directory (cg.out for callgrind_annotate).
# Needs valgrind, curl, python3; ports 18601-18603 on loopback.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-2000}; BIN=${BIN:-$HERE/target/release/portcullis}; W=$(mktemp -d /tmp/portcullis-cg.XXXX)
python3 "$HERE/tests/support/backend.py" 18601 >/dev/null 2>&1 & BP=$!
cat > "$W/p.toml" <<T
[admin]
listen = "127.0.0.1:18602"
[runtime]
worker_threads = 1
[[listener]]
name = "public"
bind = ["127.0.0.1:18603"]
[[route]]
hosts = ["*"]
handler = { type = "http_proxy", upstreams = ["127.0.0.1:18601"] }
T
$BIN --store "$W/s" init >/dev/null 2>&1   # the store is created by init only
valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" $BIN --config "$W/p.toml" --store "$W/s" run >"$W/d.log" 2>&1 & VP=$!
for i in $(seq 1 300); do curl -sk -o /dev/null https://127.0.0.1:18603/ && break; sleep 0.2; done
MODE=${MODE:-keepalive}
if [[ $MODE == close ]]; then
    curl --http1.1 -sk -o /dev/null -H "Connection: close" "https://127.0.0.1:18603/x?[1-$N]"
elif [[ $MODE == full ]]; then
    curl --http1.1 -sk -o /dev/null --no-sessionid -H "Connection: close" "https://127.0.0.1:18603/x?[1-$N]"
else
    curl --http1.1 -sk -o /dev/null "https://127.0.0.1:18603/x?[1-$N]"
fi
kill -TERM $VP; wait $VP || true; kill $BP
grep -E "^summary|^totals" "$W/cg.out" | head -1
echo "$W"
