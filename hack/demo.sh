#!/usr/bin/env bash
# The demo: a real Kubernetes control plane on loopback, Automend's CRDs, and a small fleet.
# Leaves the control plane running; stop it with `hack/cluster.sh down`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
unset KUBECONFIG

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "starting etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 (builds them the first time)"
bash hack/cluster.sh up
eval "$(bash hack/cluster.sh env)"
kubectl version

step "building automend"
cargo build --locked

step "installing the CRDs from the types: ./target/debug/automend crds | kubectl apply"
./target/debug/automend crds | kubectl apply --server-side -f -
kubectl wait --for=condition=Established --timeout=60s \
  crd/virtualmachines.automend.io crd/configurationprofiles.automend.io \
  crd/updaterings.automend.io crd/patchrollouts.automend.io

step "applying the example fleet into a fresh namespace demo"
kubectl delete namespace demo --ignore-not-found --wait --timeout=120s
kubectl create namespace demo
kubectl apply -n demo -f examples/

step "kubectl get automend -n demo"
kubectl get automend -n demo

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

step "admission at work: a DevTest profile cannot enable backup"
kubectl patch configurationprofile dev-test --type merge \
  -p '{"spec":{"preferences":{"backup":{"enabled":true}}}}' || true

step "kubectl explain virtualmachine.spec.patchSettings"
kubectl explain virtualmachine.spec.patchSettings

cat <<EOF2

The control plane keeps running. Try:
  eval "\$(hack/cluster.sh env)"
  kubectl get automend -n demo
  kubectl explain configurationprofile.spec.preferences
Stop it with: hack/cluster.sh down
EOF2
