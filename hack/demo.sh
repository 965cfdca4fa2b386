#!/usr/bin/env bash
# The demo: a real Kubernetes control plane on loopback, the Automend controller, and a simulated
# fleet of 55 VMs that onboard to their profiles, drift, get remediated, and one that fails.
# Leaves everything running for exploration; `hack/demo.sh down` stops it all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
unset KUBECONFIG
DEMO_DIR=.local/demo
mkdir -p "$DEMO_DIR"
# The patching schedule runs 7200 times faster than real time (a day in 12 s); heartbeats and
# remediation stay in real time. Every process (controller, guests, kubectl plugin) reads these.
export AUTOMEND_CLOCK_START AUTOMEND_CLOCK_SPEED=7200
AUTOMEND_CLOCK_START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
virtual_now() {
  local s n
  s=$(date -u -d "$AUTOMEND_CLOCK_START" +%s); n=$(date -u +%s)
  date -u -d "@$(( s + (n - s) * AUTOMEND_CLOCK_SPEED ))" +%Y-%m-%dT%H:%M:%SZ
}
# The binaries, wherever cargo puts them (CARGO_TARGET_DIR is honoured).
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target/debug"
export PATH="$bin:$PATH"   # kubectl-automend: the kubectl plugin

# Each step says how long the one before it took; the end says the total.
demo_start=$SECONDS
step_start=$SECONDS
step_name=""
step_done() {
  if [[ -n "$step_name" ]]; then
    printf '\033[2m    (%ss: %s)\033[0m\n' $((SECONDS - step_start)) "$step_name"
  fi
}
step() {
  step_done
  step_name="$*"
  step_start=$SECONDS
  printf '\n\033[1m==> %s\033[0m\n' "$*"
}

stop_processes() {
  for p in controller sim; do
    if [[ -f "$DEMO_DIR/$p.pid" ]]; then
      kill "$(cat "$DEMO_DIR/$p.pid")" 2>/dev/null || true
      rm -f "$DEMO_DIR/$p.pid"
    fi
  done
}

if [[ "${1:-}" == "down" ]]; then
  stop_processes
  bash hack/cluster.sh down
  exit 0
fi
# --real-guests N: after the simulated fleet, an act with N booted Linux guests (systemd as PID 1
# under systemd-nspawn, as root) patched with real reboots. Off by default: it needs root,
# systemd-container and mmdebstrap, and builds a guest image the first time (about a minute).
# --in-cluster: the controller runs as the chart's Pods on a node of this machine (containerd,
# kubelet, kube-proxy; root), installed with helm from an image built offline, instead of as a
# process with the admin's credentials.
usage() { echo "usage: hack/demo.sh [--in-cluster] [--real-guests N (1 to 20)] | down" >&2; exit 2; }
real_guests=0
in_cluster=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --real-guests)
      real_guests="${2:-}"
      if ! [[ "$real_guests" =~ ^[0-9]+$ ]] || (( real_guests < 1 || real_guests > 20 )); then usage; fi
      shift ;;
    --in-cluster) in_cluster=1 ;;
    *) usage ;;
  esac
  shift
done

step "checking what the demo needs (openssl, curl, python3, jq, setsid; Go and Rust)"
if [[ "$in_cluster" == 1 ]]; then
  [[ "$(id -u)" == 0 ]] || { echo "--in-cluster runs a node (containerd, kubelet): run it as root" >&2; exit 1; }
  bash hack/deps.sh install node
else
  bash hack/deps.sh install demo
fi

if [[ "$in_cluster" == 1 ]]; then
  step "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a node (containerd, kubelet, kube-proxy); builds them the first time"
  bash hack/cluster.sh up --node
else
  step "starting etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 (builds them the first time)"
  bash hack/cluster.sh up
fi
eval "$(bash hack/cluster.sh env)"
kubectl version

step "building automend"
cargo build --locked

step "installing the CRDs from the types and the chart's guest admission policy"
"$bin/automend" crds | kubectl apply --server-side -f -
wait_crds
helm template automend charts/automend --kube-version "$(kubectl version -o json | jq -r .serverVersion.gitVersion)" \
  -s templates/guest-admission.yaml | kubectl apply --server-side -f -

stop_processes
if [[ "$in_cluster" == 1 ]]; then
  step "building the controller's image offline (hack/image.sh) and installing the chart onto the node"
  bash hack/image.sh build --binary "$bin/automend" --tag demo --import
  helm upgrade --install automend charts/automend -n automend-system --create-namespace --take-ownership \
    --set image.tag=demo --set image.pullPolicy=Never --set controller.heartbeatGrace=20s \
    --set patching.releaseCadence=off --set-json 'patching.regionPairs=["northeurope=westeurope"]' \
    --set-json "controller.extraArgs=[\"--clock-start=$AUTOMEND_CLOCK_START\",\"--clock-speed=$AUTOMEND_CLOCK_SPEED\"]" \
    --wait --timeout 180s
  kubectl get pods -n automend-system -o wide
else
  step "starting the controller (logs: $DEMO_DIR/controller.log)"
  RUST_LOG=info,kube=warn "$bin/automend" controller --leader-elect=false \
    --heartbeat-grace 20s --http-addr 127.0.0.1:0 --region-pairs northeurope=westeurope \
    --release-cadence off >"$DEMO_DIR/controller.log" 2>&1 &
  echo $! >"$DEMO_DIR/controller.pid"
fi

step "a fresh namespace demo with the example fleet (25 VMs) and 30 more generated VMs"
kubectl delete namespace demo --ignore-not-found --wait --timeout=120s
kubectl create namespace demo
kubectl apply -f examples/profiles.yaml
# Remediation retries quickly in the demo (the default waits 30s, doubling).
kubectl patch configurationprofile production --type merge \
  -p '{"spec":{"remediation":{"initialBackoff":"3s","maxBackoff":"6s"}}}'
kubectl apply -n demo -f examples/vms.yaml -f examples/rings.yaml
for i in $(seq -w 1 30); do
  region=$([[ $((10#$i % 2)) == 0 ]] && echo westeurope || echo northeurope)
  cat <<YAML
---
apiVersion: automend.io/v1alpha1
kind: VirtualMachine
metadata:
  name: app-$i
  labels: { app: api }
spec:
  management: { profile: $([[ $((10#$i % 5)) == 0 ]] && echo dev-test || echo production) }
  os: { type: Linux, image: { publisher: Canonical, offer: ubuntu-24_04-lts, sku: server } }
  placement: { region: $region, zone: "$(( (10#$i % 3) + 1 ))" }
  patchSettings: { patchMode: AutomaticByPlatform }
YAML
done | kubectl apply -n demo -f - >/dev/null
echo "$(kubectl get virtualmachines -n demo --no-headers | wc -l) VirtualMachines in namespace demo"

step "starting the simulated guests, each with its own identity (logs: $DEMO_DIR/sim.log)"
RUST_LOG=info,kube=warn "$bin/automend" sim -n demo --heartbeat-interval 5s --observe-interval 3s \
  >"$DEMO_DIR/sim.log" 2>&1 &
echo $! >"$DEMO_DIR/sim.pid"

phases() {
  kubectl get virtualmachines -n demo -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' \
    | sed 's/^$/(none)/' | sort | uniq -c | awk '{printf "%s=%s  ", $2, $1}'
}

wait_until() { # description, timeout seconds, condition command
  local what=$1 timeout=$2; shift 2
  local start=$SECONDS
  until "$@"; do
    if (( SECONDS - start > timeout )); then echo; echo "timed out waiting for $what" >&2; return 1; fi
    printf '\r  %3ss  %s' $((SECONDS - start)) "$(phases)"
    sleep 2
  done
  printf '\r  %3ss  %s\n' $((SECONDS - start)) "$(phases)"
}

all_configured() {
  local total configured
  total=$(kubectl get virtualmachines -n demo --no-headers | wc -l)
  configured=$(kubectl get virtualmachines -n demo -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Configured$' || true)
  [[ "$total" == "$configured" ]]
}

step "onboarding: every VM goes InProgress -> Configured"
wait_until "the fleet to be Configured" 240 all_configured
listing=$(kubectl get automend -n demo)
echo "$listing" | head -24
echo "... ($(echo "$listing" | wc -l) lines)"

step "drift: app-07 loses its monitoring agent, app-11's time servers are changed by hand"
kubectl annotate -n demo virtualmachine app-07 sim.automend.io/drift=monitoring --overwrite
kubectl annotate -n demo virtualmachine app-11 'sim.automend.io/drift=timeSync.servers=["rogue.example"]' --overwrite
step "app-13 drifts too, but on it every fix fails (sim.automend.io/fail-remediation)"
kubectl annotate -n demo virtualmachine app-13 sim.automend.io/fail-remediation=true --overwrite
kubectl annotate -n demo virtualmachine app-13 sim.automend.io/drift=securityBaseline.enabled=false --overwrite

remediated() {
  [[ "$(kubectl get events -n demo --field-selector reason=Remediated -o name | wc -l)" -ge 2 ]] &&
    [[ "$(kubectl get virtualmachine -n demo app-13 -o jsonpath='{.status.phase}')" == Failed ]]
}
wait_until "drift to be remediated and app-13 to fail" 180 remediated

step "kubectl get virtualmachines -n demo app-07 app-11 app-13"
kubectl get virtualmachines -n demo app-07 app-11 app-13
echo
kubectl get virtualmachine -n demo app-13 -o jsonpath='app-13: {.status.message}{"\n"}'

step "Events: kubectl get events -n demo (drift and remediation)"
kubectl get events -n demo --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message \
  | grep -E 'TYPE|DriftDetected|Remediated|RemediationFailed'

step "kubectl get configurationprofiles"
kubectl get configurationprofiles
echo
echo "Onboardings, one Event per profile and batch (kubectl get events -n default --field-selector reason=Onboarded):"
kubectl get events -n default --field-selector reason=Onboarded --sort-by=.metadata.creationTimestamp \
  -o custom-columns=PROFILE:.involvedObject.name,MESSAGE:.message | cut -c1-150

step "admission at work: a Linux VM asking for Windows' AutomaticByOS mode is rejected"
cat <<'YAML' | kubectl apply -n demo -f - || true
apiVersion: automend.io/v1alpha1
kind: VirtualMachine
metadata:
  name: bad-linux
spec:
  os: { type: Linux, image: { publisher: Canonical, offer: ubuntu-24_04-lts, sku: server } }
  placement: { region: westeurope }
  patchSettings: { patchMode: AutomaticByOS }
YAML

step "admission at work: the profile cannot change while management is enabled"
kubectl patch virtualmachine -n demo app-01 --type merge -p '{"spec":{"management":{"profile":"dev-test"}}}' || true

step "patching: the four example rings (Test, First, Fast, Broad) at ${AUTOMEND_CLOCK_SPEED}x: a day passes in $((86400 / AUTOMEND_CLOCK_SPEED)) s"
kubectl get updaterings -n demo
rollout_phase() { kubectl get patchrollout -n demo "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
watch_rollout() { # name, timeout, phases to stop at (regex)
  local name=$1 timeout=$2 until=$3 start=$SECONDS
  while ! [[ "$(rollout_phase "$name")" =~ ^($until)$ ]]; do
    if (( SECONDS - start > timeout )); then echo "timed out waiting for rollout $name" >&2; return 1; fi
    printf '\r  %3ss  virtual %s  %s' $((SECONDS - start)) "$(virtual_now)" \
      "$(kubectl get patchrollout -n demo "$name" -o jsonpath='{.status.phase} ring={.status.currentRing} patched={.status.slo.onManifest}/{.status.slo.eligible}' 2>/dev/null)"
    sleep 2
  done
  echo
}
# A bad patch: two VMs of ring fast report themselves unhealthy after patching.
mapfile -t bad < <(kubectl automend -n demo members fast | tail -n +2 | awk '$2 == "yes" {print $1}' | head -2)
echo "injecting a bad patch into ring fast: ${bad[*]} turn unhealthy after patching"
for vm in "${bad[@]}"; do
  kubectl annotate -n demo virtualmachine "$vm" sim.automend.io/unhealthy=true --overwrite >/dev/null
done
release=$(virtual_now)
sed -e "s/name: release-2026-11/name: release-monthly/" -e "s/releaseTime: .*/releaseTime: \"$release\"/" \
  examples/rollout.yaml | kubectl apply -n demo -f -
step "the monthly release $release moves ring by ring, wave by wave, inside each VM's window"
watch_rollout release-monthly 600 'Halted|Succeeded'
kubectl automend -n demo status release-monthly
step "the bad patch halted the rollout in ring fast; its failed wave rolled back (Events)"
kubectl get events -n demo --field-selector involvedObject.name=release-monthly --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
step "kubectl automend why ${bad[0]}"
kubectl automend -n demo why "${bad[0]}" --rollout release-monthly

step "fixed: an out-of-band release, expedited (no deferrals), goes through all four rings"
for vm in "${bad[@]}"; do
  kubectl annotate -n demo virtualmachine "$vm" sim.automend.io/unhealthy- >/dev/null
done
cat <<YAML | kubectl apply -n demo -f -
apiVersion: automend.io/v1alpha1
kind: PatchRollout
metadata:
  name: release-oob
spec:
  releaseTime: "$(virtual_now)"
  expedite: true
  rollbackOnFailure: true
YAML
sleep 3
kubectl automend -n demo plan release-oob | head -12
watch_rollout release-oob 600 'Halted|Succeeded'
kubectl automend -n demo status

if (( real_guests > 0 )); then
  step "real guests: $real_guests Debian machines booted with systemd, the agent as a systemd unit, patched with real reboots (on a control plane of their own; printed as it goes)"
  bash hack/deps.sh install test
  AUTOMEND_REAL_GUESTS=$real_guests cargo test --locked --test e2e_guests demo_real_guests -- \
    --ignored --exact --nocapture 2>&1 | grep --line-buffered -E '^\[(real|booted) guests\]|test result|panicked'
fi

step_done
printf '\nThe demo took %ss.\n' $((SECONDS - demo_start))

cat <<EOF2

The control plane, the controller and the simulated fleet keep running. Try:
  eval "\$(hack/cluster.sh env)"
  kubectl get automend -n demo
  export PATH="$bin:\$PATH" AUTOMEND_CLOCK_START=$AUTOMEND_CLOCK_START AUTOMEND_CLOCK_SPEED=$AUTOMEND_CLOCK_SPEED
  kubectl automend -n demo status; kubectl automend -n demo why app-05
  kubectl describe virtualmachine -n demo app-13
  kubectl annotate -n demo virtualmachine app-02 sim.automend.io/power=off   # Pending after 20s
  $bin/automend guest-kubeconfig -n demo app-02 > guest.kubeconfig  # a guest's own identity
Stop everything with: hack/demo.sh down
EOF2
