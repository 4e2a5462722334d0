#!/usr/bin/env bash
# loadtest/run.sh — Portcullis against HAProxy and nginx (Debian packages) in one run:
# same certificate, same plain-HTTP backend, same CPU pinning, loopback only.
#
#   full_ecdsa  full TLS 1.3 handshakes/s, ECDSA P-256, one request per connection
#   full_rsa    the same with RSA-2048
#   resumed     ticket-resumed handshakes/s (ECDSA)
#   keepalive   requests/s and p99 latency, 100-byte body, 64 keep-alive connections
#   bulk        MB/s of 1 MiB bodies over 8 keep-alive connections
#   rss         peak RSS (VmHWM) of the proxy's process tree
# and, after the table, Portcullis's full handshakes per core as a share of the crypto
# ceiling that `openssl speed` gives on the proxy's core (X25519 + ECDSA P-256 sign;
# RSA-2048 sign).
#
# Every load run also records how busy the proxy's core was during the measured window
# (/proc/stat: everything but idle and iowait, so softirq work for its packets counts).
# The goals are per proxy core: when the client's core saturates first, the raw rate
# understates the proxy, so the second table divides each rate by that busy share.
#
# Each proxy gets CPU $PROXY_CPU alone with one worker; the client (loadtest/client.rs,
# rustls; h2load and wrk resume sessions, so they cannot measure full handshakes) and
# the backend (nginx) share CPU $CLIENT_CPU. ROUNDS runs of everything, interleaved;
# the table gives medians and Portcullis's ratio to the best peer.
#
# Usage: loadtest/run.sh            (ROUNDS=3 DURATION=8 WARMUP=2 by default)
#        TESTS="keepalive" PEERS="portcullis haproxy" loadtest/run.sh   (a subset)
# Needs: apt-get install -y haproxy nginx; builds target/release/portcullis and the client.
# Every load run stops by itself (WARMUP + DURATION seconds); every process started
# here is stopped on exit.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
PROXY_CPU=${PROXY_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
BASE_PORT=${BASE_PORT:-19080}
PEERS=${PEERS:-"portcullis haproxy nginx"}
TESTS=${TESTS:-"full_ecdsa full_rsa resumed keepalive bulk"}
OUT=${OUT:-/tmp/portcullis-loadtest.json}
HOST=bench.test

for c in taskset setsid nginx haproxy openssl curl awk; do
    command -v "$c" >/dev/null || { echo "missing $c (apt-get install -y haproxy nginx openssl curl)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # HAProxy wants 2 fds per maxconn
(cd "$HERE" && cargo build --release --quiet --bin portcullis --example loadclient)
CLIENT=$HERE/target/release/examples/loadclient
TMP=$(mktemp -d /tmp/loadtest.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '[loadtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start() { # CPU CMD... ; sets LAST
    local cpu=$1; shift
    setsid taskset -c "$cpu" "$@" >>"$TMP/procs.log" 2>&1 </dev/null &
    LAST=$!
    PIDS+=("$LAST")
}
stop() {
    kill -TERM -- "-$1" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
tree() { # PID and descendants
    awk -v root="$1" '{ pid=$1; sub(/^.*\) /, ""); pp[pid]=$2 } END { keep[root]=1; ch=1;
        while (ch) { ch=0; for (p in pp) if (!(p in keep) && (pp[p] in keep)) { keep[p]=1; ch=1 } }
        for (p in keep) if (p in pp) print p }' /proc/[0-9]*/stat 2>/dev/null
}
hwm_kb() { local t=0 v p; for p in $(tree "$1"); do v=$(awk '$1=="VmHWM:"{print $2}' "/proc/$p/status" 2>/dev/null || true); t=$((t + ${v:-0})); done; echo "$t"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

# Certificates and backend.
for kind in ecdsa rsa; do
    if [[ $kind == rsa ]]; then newkey=(-newkey rsa:2048); else newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); fi
    openssl req -x509 "${newkey[@]}" -nodes -keyout "$TMP/$kind.key" -out "$TMP/$kind.crt" -days 7 \
        -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" 2>/dev/null
    cat "$TMP/$kind.crt" "$TMP/$kind.key" >"$TMP/$kind.pem"
done
mkdir -p "$TMP/backend/www"
head -c 1048576 /dev/zero | tr '\0' 'b' >"$TMP/backend/www/1m"
head -c 100 /dev/zero | tr '\0' 'x' >"$TMP/backend/www/small"
USER_LINE=""; [[ $EUID == 0 ]] && USER_LINE="user root;"
temp_paths() { echo "client_body_temp_path $1/cb; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft; uwsgi_temp_path $1/ut; scgi_temp_path $1/st;"; }
cat >"$TMP/backend/nginx.conf" <<NGINX
$USER_LINE
daemon off; worker_processes 1; pid $TMP/backend/nginx.pid; error_log $TMP/backend/error.log error;
events { worker_connections 4096; }
http { access_log off; $(temp_paths "$TMP/backend") sendfile on; keepalive_requests 10000000; keepalive_timeout 120s;
  server { listen 127.0.0.1:$BASE_PORT backlog=4096; root $TMP/backend/www; default_type application/octet-stream; } }
NGINX
start "$CLIENT_CPU" nginx -e "$TMP/backend/error.log" -p "$TMP/backend" -c "$TMP/backend/nginx.conf"
wait_port "$BASE_PORT"
BACKEND=127.0.0.1:$BASE_PORT

peer_start() { # NAME KIND PORT
    local name=$1 kind=$2 port=$3 dir=$TMP/$1-$2
    mkdir -p "$dir"
    case $name in
    portcullis)
        start "$PROXY_CPU" "$HERE/loadtest/portcullis-peer.sh" "$port" "$TMP/$kind.crt" "$TMP/$kind.key" "$BACKEND" 1 "$dir" ;;
    haproxy)
        cat >"$dir/haproxy.cfg" <<HAP
global
    nbthread 1
    maxconn 8000
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$port ssl crt $TMP/$kind.pem alpn http/1.1
    default_backend be
backend be
    server s1 $BACKEND
HAP
        start "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg" ;;
    nginx)
        cat >"$dir/nginx.conf" <<NGX
$USER_LINE
daemon off; worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log error;
events { worker_connections 20000; }
http { access_log off; $(temp_paths "$dir") keepalive_requests 10000000;
  upstream be { server $BACKEND; keepalive 64; }
  ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
  server { listen 127.0.0.1:$port ssl backlog=4096; ssl_certificate $TMP/$kind.crt; ssl_certificate_key $TMP/$kind.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
        start "$PROXY_CPU" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" ;;
    esac
    wait_port "$port"
    curl -sfk --resolve "$HOST:$port:127.0.0.1" -o /dev/null "https://$HOST:$port/small" || { echo "$name did not proxy" >&2; exit 1; }
}

cpu_ticks() { # busy and total jiffies of CPU $PROXY_CPU
    awk -v c="cpu$PROXY_CPU" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
run_client() { # MODE PORT CONNS [PATH]; prints the client's JSON with "busy" (proxy core share) added
    local b0 b1 json
    (sleep "$WARMUP"; cpu_ticks >"$TMP/busy0"; sleep "$DURATION"; cpu_ticks >"$TMP/busy1") &
    local sampler=$!
    json=$(taskset -c "$CLIENT_CPU" timeout $((WARMUP + DURATION + 10)) "$CLIENT" "$1" "127.0.0.1:$2" "$HOST" "$3" "$WARMUP" "$DURATION" "${4:-/small}")
    wait "$sampler"
    read -r b0 t0 <"$TMP/busy0"; read -r b1 t1 <"$TMP/busy1"
    echo "${json%\}},\"busy\":$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.3f", (t > 0 ? b / t : 0) }')}"
}
want() { [[ " $TESTS " == *" $1 "* ]]; }

: >"$TMP/results"
port=$((BASE_PORT + 100))
for round in $(seq "$ROUNDS"); do
    for name in $PEERS; do
        for kind in ecdsa rsa; do
            [[ $kind == rsa ]] && ! want full_rsa && continue
            port=$((port + 1))
            peer_start "$name" "$kind" "$port"
            pid=$LAST
            log "round $round: $name ($kind) on :$port"
            if want "full_$kind"; then r=$(run_client full "$port" 32); echo "$round $name full_$kind $r" >>"$TMP/results"; fi
            if [[ $kind == ecdsa ]]; then
                if want resumed; then r=$(run_client resumed "$port" 32); echo "$round $name resumed $r" >>"$TMP/results"; fi
                if want keepalive; then r=$(run_client keepalive "$port" 64); echo "$round $name keepalive $r" >>"$TMP/results"; fi
                if want bulk; then r=$(run_client bulk "$port" 8 /1m); echo "$round $name bulk $r" >>"$TMP/results"; fi
                echo "$round $name rss {\"rss_kb\":$(hwm_kb "$pid")}" >>"$TMP/results"
            fi
            stop "$pid"
        done
    done
done
cp "$TMP/results" "$OUT.raw"
# Medians per (peer, test) and ratios to the best peer.
awk -v peers="$PEERS" '
function field(s, k,   m) { if (match(s, "\"" k "\":[0-9.]+")) { m = substr(s, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0 } return -1 }
function median(arr, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t } return arr[int((n + 1) / 2)] }
{ peer = $2; test = $3; line = $0
  if (test == "rss") { v = field(line, "rss_kb") / 1024; key = peer SUBSEP "rss_mb" }
  else if (test == "bulk") { v = field(line, "mb_per_s"); key = peer SUBSEP test }
  else { v = field(line, "rate"); key = peer SUBSEP test }
  n[key]++; vals[key, n[key]] = v
  b = field(line, "busy"); if (test != "rss" && b > 0) { k4 = peer SUBSEP test "/core"; n[k4]++; vals[k4, n[k4]] = v / b
    k5 = peer SUBSEP test "_busy"; n[k5]++; vals[k5, n[k5]] = b }
  if (test == "keepalive") { k2 = peer SUBSEP "p99_ms"; n[k2]++; vals[k2, n[k2]] = field(line, "p99_ms") }
  if (test == "resumed") { k3 = peer SUBSEP "resumed_share"; n[k3]++; vals[k3, n[k3]] = (field(line, "requests") > 0 ? field(line, "resumed") / field(line, "requests") : 0) } }
END {
  nt = split("full_ecdsa full_rsa resumed resumed_share keepalive p99_ms bulk rss_mb" \
    " full_ecdsa_busy full_rsa_busy resumed_busy keepalive_busy bulk_busy" \
    " full_ecdsa/core full_rsa/core resumed/core keepalive/core bulk/core", tests, " ")
  np = split(peers, P, " ")
  printf "%-16s", "test"; for (i = 1; i <= np; i++) printf "%14s", P[i]; printf "%16s\n", "portcullis/best"
  for (t = 1; t <= nt; t++) { test = tests[t]; if (t == 9) print "# busy share of the proxy core, then rate per busy proxy core-second"
    if (!((P[1] SUBSEP test) in n)) continue; printf "%-16s", test; best = -1
    for (i = 1; i <= np; i++) { key = P[i] SUBSEP test; m = 0
      if (n[key] > 0) { delete a; for (j = 1; j <= n[key]; j++) a[j] = vals[key, j]; m = median(a, n[key]) }
      med[P[i]] = m; printf "%14.2f", m
      if (P[i] != "portcullis") { lower = (test == "p99_ms" || test == "rss_mb" || test ~ /_busy$/); if (best < 0 || (lower ? m < best : m > best)) best = m } }
    printf "%16s\n", (best > 0 ? sprintf("%.2fx", med["portcullis"] / best) : "-") } }' "$TMP/results" | tee "$OUT"
# The crypto ceilings of the goals: a full ECDSA handshake can be no faster than one
# X25519 exchange plus one ECDSA P-256 signature, a full RSA one than one RSA-2048
# signature; openssl speed measures both on the proxy's core.
if want full_ecdsa || want full_rsa; then
    speed=$(taskset -c "$PROXY_CPU" openssl speed -seconds 3 ecdsap256 rsa2048 ecdhx25519 2>/dev/null)
    awk -v rsa="$(awk '/^rsa 2048 bits/ { print $(NF-1) }' <<<"$speed")" \
        -v ecdsa="$(awk '/ecdsa \(nistp256\)/ { print $(NF-1) }' <<<"$speed")" \
        -v x25519="$(awk '/ecdh \(X25519\)/ { print $NF }' <<<"$speed")" -v cpu="$PROXY_CPU" '
        $1 == "test" { for (i = 2; i <= NF; i++) if ($i == "portcullis") col = i }
        col && $1 == "full_ecdsa/core" { e = $col }
        col && $1 == "full_rsa/core" { r = $col }
        END {
          printf "# share of the crypto ceiling on CPU %s (openssl speed: ECDSA P-256 sign %.0f/s, X25519 %.0f/s, RSA-2048 sign %.0f/s)\n", cpu, ecdsa, x25519, rsa
          if (e && ecdsa && x25519) { c = 1 / (1 / ecdsa + 1 / x25519); printf "%-16s%13.1f%%  of %.0f full ECDSA handshakes/s\n", "ecdsa_ceiling", 100 * e / c, c }
          if (r && rsa) printf "%-16s%13.1f%%  of %.0f RSA-2048 signatures/s\n", "rsa_ceiling", 100 * r / rsa, rsa }' "$OUT" | tee -a "$OUT"
fi
log "raw results: $OUT.raw; table: $OUT"
