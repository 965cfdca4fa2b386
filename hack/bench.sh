#!/usr/bin/env bash
# The fleet bench: onboarding against the write floor, API requests and controller writes per VM,
# steady state, a rollout, controller memory per VM and the guest identity model's cost, measured
# in one run on a control plane of its own (never the one in $KUBECONFIG) with the release build.
#
#   hack/bench.sh                    N = 2,000 onboarded VMs, 10,000 for memory and identities
#   hack/bench.sh --vms 500 --big 2000 --steady-seconds 30
#                                    (arguments go to benches/fleet; --help lists them)
#   hack/bench.sh --guest-webhook    the same with guests authorized by the controller (the API
#                                    server's authorization webhook, --guest-authorization=webhook)
#
# Results are printed and written to target/bench/results.md; the controller's and the
# simulator's logs to target/bench/logs/. The control plane is removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
unset KUBECONFIG AUTOMEND_GUEST_AUTHORIZATION AUTOMEND_AUTHORIZER_ADDR AUTOMEND_AUTHORIZER_CERT AUTOMEND_AUTHORIZER_KEY

up_args=()
bench_args=()
for arg in "$@"; do
  if [ "$arg" = --guest-webhook ]; then up_args+=(--guest-webhook); else bench_args+=("$arg"); fi
done

out="${AUTOMEND_BENCH_DIR:-$PWD/target/bench}"
export AUTOMEND_CLUSTER_DIR="$out/cluster"
target="${CARGO_TARGET_DIR:-$PWD/target}"

echo "==> building the control plane (first run only), automend and the bench (release)"
bash hack/cluster.sh build
# One build of the crate for both (the bench feature adds only analysis code to the library).
bench_bin="$(cargo build --release --locked --features bench --bin automend --bench fleet \
  --message-format=json-render-diagnostics |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "fleet") | .executable')"
[ -x "$bench_bin" ] || { echo "the bench binary was not built" >&2; exit 1; }

echo "==> a fresh control plane in $AUTOMEND_CLUSTER_DIR"
bash hack/cluster.sh down --purge >/dev/null 2>&1 || true
trap 'bash hack/cluster.sh down --purge' EXIT
bash hack/cluster.sh up "${up_args[@]}"
# (with --guest-webhook this also exports the controller's authorizer settings: every controller
# the bench starts inherits them)
eval "$(bash hack/cluster.sh env)"
"$target/release/automend" crds | kubectl apply --server-side -f - >/dev/null
wait_crds
# The guests' admission policy, as the chart installs it (its cost is part of every guest write).
helm template automend charts/automend --kube-version "$(kubectl version -o json | jq -r .serverVersion.gitVersion)" \
  -s templates/guest-admission.yaml | kubectl apply --server-side -f - >/dev/null

echo "==> the bench"
mkdir -p "$out/logs"
"$bench_bin" \
  --automend "$target/release/automend" \
  --apiserver-pid "$(cat "$AUTOMEND_CLUSTER_DIR/pids/kube-apiserver")" \
  --logs "$out/logs" --out "$out/results.md" "${bench_args[@]}"
