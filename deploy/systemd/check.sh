#!/usr/bin/env bash
# Checks the systemd unit (run by .ci/run after a release build): systemd-analyze verify
# accepts it, and its exposure score (systemd-analyze security) stays at most 2.0 ("OK").
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$PWD/target/release/statenode
test -x "$bin" || { echo "build the release binary first (cargo build --release)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify wants the program to exist and the environment file optional on this machine.
sed -e "s|/usr/local/bin/statenode|$bin|" \
    -e 's|^EnvironmentFile=/|EnvironmentFile=-/|' deploy/systemd/statenode.service > "$tmp/statenode.service"
systemd-analyze verify "$tmp/statenode.service"
score=$(systemd-analyze security --offline=yes "$tmp/statenode.service" | sed -n 's/.*Overall exposure level for statenode.service: \([0-9.]*\).*/\1/p')
echo "systemd unit: verified, exposure $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || { echo "exposure $score is over 2.0" >&2; exit 1; }
