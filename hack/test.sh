#!/usr/bin/env bash
# Run every test: formatting, lints, unit tests, and the end-to-end suites against a real control
# plane that each test binary starts on loopback (built once by hack/cluster.sh).
#
#   hack/test.sh                    everything, on local control planes
#   hack/test.sh --use-kubeconfig   the same suites against the cluster in $KUBECONFIG (e.g. kind)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${1:-}" != "--use-kubeconfig" ]; then
  # Never touch whatever cluster the caller's KUBECONFIG points at.
  unset KUBECONFIG
fi

# The agent's tests drive the real package managers and systemctl on sandboxed roots; installed
# here when missing (as root), else the exact apt-get command is printed.
bash hack/deps.sh install test

# A one-off build gains nothing from incremental state but gigabytes of disk; a caller that wants
# it (a developer's loop) sets CARGO_INCREMENTAL=1.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "==> building the control plane and node binaries (first run only)"
bash hack/cluster.sh build --node

echo "==> shellcheck hack/ .ci/"
shellcheck -x hack/*.sh hack/tools/*.sh .ci/run

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --all-targets --features bench --locked -- -D warnings

echo "==> cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
