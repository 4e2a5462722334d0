#!/usr/bin/env bash
# loadtest/scale.sh — a store of N certificates (issue 20): how long until the daemon
# listens, its RSS, its CPU while idle, and how long one changed, added and deleted
# certificate takes from the rename to the first handshake that sees it.
#
#   loadtest/scale.sh BIN STORE_DIR [IDLE_SECS]
#
# STORE_DIR is filled beforehand with `fillstore STORE_DIR N default` (entries
# tenant-0 .. tenant-(N-1) for i.example.com, all assigned to the built-in listener
# "default" on 127.0.0.1:8443). Checked with openssl s_client (the serial served).
# Every wait is bounded; the daemon is stopped on exit.
set -euo pipefail
BIN=$1 STORE=$2 IDLE=${3:-60}
PORT=8443
LOG=$(mktemp)
now() { date +%s.%N; }
serial_of() { # SNI -> serial served (or empty)
  timeout 5 openssl s_client -connect 127.0.0.1:$PORT -servername "$1" </dev/null 2>/dev/null \
    | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2
}
wait_until() { # seconds, command...: polls every 20 ms
  local limit=$1; shift
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out: $*" >&2; return 1; }
    sleep 0.02
  done
}
listening() { (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; }
n=$(ls "$STORE/certs" | wc -l)
t0=$(now)
RUST_LOG=info "$BIN" --store "$STORE" run 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f $LOG' EXIT
wait_until 600 listening
t1=$(now)
echo "entries: $n"
echo "listening after: $(echo "$t1 - $t0" | bc) s"
sleep 2
echo "RSS after start: $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$PID/status)"
cpu() { awk '{print $14 + $15}' /proc/$PID/stat; }
c0=$(cpu); sleep "$IDLE"; c1=$(cpu)
echo "CPU while idle for ${IDLE}s: $(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l | cut -c1-5) s"
# One changed entry: another entry's certificate and key renamed into tenant-1's place.
i=$(( n / 2 ))
dir="$STORE/certs/tenant-1"
old=$(serial_of 1.example.com)
cp "$STORE/certs/tenant-$i/cert.pem" "$dir/cert.new"; cp "$STORE/certs/tenant-$i/key.pem" "$dir/key.new"
t0=$(now); mv "$dir/key.new" "$dir/key.pem"; mv "$dir/cert.new" "$dir/cert.pem"
wait_until 300 bash -c "s=\$(timeout 5 openssl s_client -connect 127.0.0.1:$PORT -servername 1.example.com </dev/null 2>/dev/null | openssl x509 -noout -serial | cut -d= -f2); [ -n \"\$s\" ] && [ \"\$s\" != '$old' ]"
t1=$(now)
echo "changed entry served after: $(echo "$t1 - $t0" | bc) s"
# One deleted entry: moved out of the store (as `cert delete` does, through .staging/).
mkdir -p "$STORE/.staging"
old=$(serial_of 2.example.com)
t0=$(now); mv "$STORE/certs/tenant-2" "$STORE/.staging/deleted-scale"; rm -rf "$STORE/.staging/deleted-scale"
wait_until 300 bash -c "s=\$(timeout 5 openssl s_client -connect 127.0.0.1:$PORT -servername 2.example.com </dev/null 2>/dev/null | openssl x509 -noout -serial | cut -d= -f2); [ -n \"\$s\" ] && [ \"\$s\" != '$old' ]"
t1=$(now)
echo "deleted entry gone after: $(echo "$t1 - $t0" | bc) s"
grep -E "reloaded" "$LOG" | tail -3 | sed 's/^/log: /'
echo "RSS at the end: $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$PID/status)"
