#!/usr/bin/env bash
# loadtest/commands.sh — how long each CLI command takes on a store (issue 20: the same
# at 10 and at 100,000 entries, within 2x). Run it on a store filled by
#   cargo run --release --example fillstore -- DIR N default
# and compare the columns of two runs (N = 10 and N = 100000). It creates, lists,
# assigns and deletes its own entries (probe-*), leaving the store as it found it.
#
#   loadtest/commands.sh BIN STORE_DIR
set -euo pipefail
BIN=$1 STORE=$2
run() { # label, args...: prints wall seconds and peak RSS
  local label=$1; shift
  /usr/bin/time -f "%e s  %M KB  $label" "$BIN" --store "$STORE" "$@" >/dev/null 2>/tmp/commands.$$ \
    || { cat /tmp/commands.$$ >&2; exit 1; }
  tail -1 /tmp/commands.$$
}
trap 'rm -f /tmp/commands.$$' EXIT
echo "entries: $(ls "$STORE/certs" | wc -l)"
run "create-self-signed" cert create-self-signed --name "Probe One" --san probe1.commands.test
run "create-self-signed (2nd)" cert create-self-signed --name "Probe Two" --san probe2.commands.test
run "request (CSR)" cert request --name "Probe Req" --san probe3.commands.test
run "show by id" cert show probe-one
run "show by friendly name" cert show "Probe Two"
run "assign" cert assign probe-one --listener default
run "set-default" cert set-default probe-one
run "which" cert which probe1.commands.test
run "list --filter" cert list --filter probe1.commands
run "list --limit 20" cert list --limit 20
run "set-default back" cert set-default portcullis-default
run "delete (assigned)" cert delete probe-one --force
run "delete" cert delete probe-two --force
run "delete request" cert delete probe-req --force
