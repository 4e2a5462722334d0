#!/usr/bin/env bash
# loadtest/peer_rss.sh — memory per certificate beside one peer (issue 20): Portcullis
# serving a fillstore store, and HAProxy serving the same certificates from a crt-list
# (one PEM of certificate + key per entry), one after the other on this machine. Prints
# for each: seconds until the TLS port accepts, and RSS once listening (HAProxy: the sum
# over its processes).
#
#   loadtest/peer_rss.sh BIN STORE_DIR
#
# STORE_DIR is filled beforehand with `fillstore STORE_DIR N default`. Every wait is
# bounded (600 s); both processes are stopped on exit.
set -euo pipefail
BIN=$1 STORE=$2
PORT=8443 HPORT=8543
WORK=$(mktemp -d)
cleanup() { kill "${PID:-}" "${HPID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }
accepting() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
wait_port() {
  local end=$(( $(date +%s) + 600 ))
  until accepting "$1"; do [ "$(date +%s)" -lt "$end" ] || { echo "timed out on port $1" >&2; exit 1; }; sleep 0.05; done
}
served() { # port -> subject served for SNI 5.example.com (a check that it serves the store)
  timeout 5 openssl s_client -connect 127.0.0.1:"$1" -servername 5.example.com </dev/null 2>/dev/null \
    | openssl x509 -noout -subject 2>/dev/null
}
rss_kb() { for p in "$@"; do awk '/VmRSS/ {print $2}' /proc/"$p"/status; done | awk '{s += $1} END {print s}'; }
n=$(ls "$STORE/certs" | wc -l)
echo "certificates: $n"

t0=$(now)
"$BIN" --store "$STORE" run >"$WORK/portcullis.log" 2>&1 &
PID=$!
wait_port $PORT
t1=$(now); sleep 2
kb=$(rss_kb $PID)
echo "portcullis serves: $(served $PORT)"
echo "portcullis: listening after $(echo "$t1 - $t0" | bc) s, RSS $((kb / 1024)) MB, $(echo "scale=1; $kb / $n" | bc) KB per certificate"
kill $PID; wait $PID 2>/dev/null || true; PID=

mkdir "$WORK/pem"
for d in "$STORE"/certs/*/; do
  id=$(basename "$d")
  [ -f "$d/key.pem" ] || continue
  cat "$d/cert.pem" "$d/key.pem" >"$WORK/pem/$id.pem"
  echo "$WORK/pem/$id.pem" >>"$WORK/crt-list"
done
cat >"$WORK/haproxy.cfg" <<CFG
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tls
  bind 127.0.0.1:$HPORT ssl crt-list $WORK/crt-list
CFG
t0=$(now)
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HPID=$!
wait_port $HPORT
t1=$(now); sleep 2
kb=$(rss_kb $HPID $(pgrep -P $HPID || true))
echo "haproxy serves: $(served $HPORT)"
echo "haproxy $(haproxy -v | head -1 | awk '{print $3}'): listening after $(echo "$t1 - $t0" | bc) s, RSS $((kb / 1024)) MB, $(echo "scale=1; $kb / $n" | bc) KB per certificate"
