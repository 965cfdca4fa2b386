#!/usr/bin/env bash
# One Kubernetes node on this machine, joined to the local control plane of hack/cluster.sh: the
# way kind builds a node inside its container, without the container. Called by
# `hack/cluster.sh up --node` and `hack/cluster.sh down`; not meant to be run by hand.
#
#   hack/node.sh up <state> <bindir> <nodebin>   start containerd, the kubelet and kube-proxy
#   hack/node.sh down <state> <nodebin>          stop them and remove the pods' network
#   hack/node.sh import <state> <nodebin> <oci-archive>   load an image into the node's containerd
#
# The pods' network is a bridge of its own (automend0, 10.244.0.0/24, gateway 10.244.0.1) with the
# bridge + host-local CNI plugins from Debian's containernetworking-plugins; the API server
# listens on the gateway address too, so pods reach it through the `kubernetes` Service that
# kube-proxy (iptables mode) maps there. Runtime: containerd and runc, built from their published
# modules by hack/cluster.sh (Debian 12's runc 1.1 cannot start containerd 2's pod sandboxes). The sandbox image is the Kubernetes release's own pause.c,
# built here with gcc, as image builds need no registry. One node per machine: the bridge, the
# pods' cgroups and iptables are machine-wide.
set -euo pipefail

BRIDGE=automend0
NODE_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
CNI_BIN=/usr/lib/cni
RUN=/run/automend-node

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=hack/lib.sh
. "$here/lib.sh"

node_dir() { echo "$state/node"; }

write_containerd_config() {
  local d; d="$(node_dir)"
  mkdir -p "$d/cni" "$RUN"
  cat >"$d/containerd.toml" <<EOF
version = 3
root = "$d/containerd"
state = "$RUN/containerd"
[grpc]
  address = "$RUN/containerd.sock"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
[plugins."io.containerd.cri.v1.runtime"]
  # Sandboxes ask for oom_score_adj -998; a machine that withholds CAP_SYS_RESOURCE refuses any
  # value below containerd's own, so keep them at or above it.
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["$CNI_BIN"]
  conf_dir = "$d/cni"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = "$nodebin/runc"
  SystemdCgroup = false
EOF
  cat >"$d/cni/10-automend.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "automend",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni-ipam",
        "ranges": [[{ "subnet": "$NODE_CIDR", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

write_kubelet_config() { # <kubelet port> <healthz port>
  local d; d="$(node_dir)"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine may still mount cgroup v1; the kubelet refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$RUN/containerd.sock
address: $NODE_IP
port: $1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $2
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $state/pki/kubelet.crt
tlsPrivateKeyFile: $state/pki/kubelet.key
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
podLogsDir: $d/pod-logs
serializeImagePulls: false
# A shared development machine: disk pressure is the host's business, not a reason to evict.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}

write_proxy_config() { # <healthz port> <metrics port>
  local d; d="$(node_dir)"
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $NODE_CIDR
hostnameOverride: $(node_name)
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
healthzBindAddress: 127.0.0.1:$1
metricsBindAddress: 127.0.0.1:$2
# Leave the machine's conntrack sysctls alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

node_name() { echo "automend-node"; }

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -qF " $NODE_IP/" || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Forwarding for the pods; what the machine had is put back by `down`.
  [ -s "$RUN/sysctl-saved" ] || sysctl net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables \
    2>/dev/null | tr -d ' ' >"$RUN/sysctl-saved" || true
  sysctl -qw net.ipv4.ip_forward=1
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
}

restore_sysctls() {
  [ -s "$RUN/sysctl-saved" ] || return 0
  local kv
  while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$RUN/sysctl-saved"
  rm -f "$RUN/sysctl-saved"
}

pause_image() { # <nodebin>: build the pause image once, import it
  local nodebin="$1" archive="$cache/images/pause-3.10.1.tar"
  if [ ! -s "$archive" ]; then
    local src
    src="$(cd "$here/tools/kubernetes" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    [ -f "$src" ] || die "pause.c not found in the Kubernetes module ($src)"
    mkdir -p "$cache/images"
    local tmp; tmp="$(mktemp -d)"
    gcc -Os -static -DVERSION=v3.10.1 -o "$tmp/pause" "$src"
    strip "$tmp/pause"
    bash "$here/image.sh" scratch-image "$archive" "$PAUSE_IMAGE" "$tmp/pause" /pause 65535
    rm -rf "$tmp"
  fi
  import_image "$nodebin" "$archive"
}

import_image() { # <nodebin> <archive>
  # ctr repeats containerd's cgroup v1 deprecation notice on every call; keep real errors only.
  "$1/ctr" --address "$RUN/containerd.sock" -n k8s.io images import "$2" 2>&1 >/dev/null | { grep -v DEPRECATION >&2 || true; }
  return "${PIPESTATUS[0]}"
}

cmd_up() {
  local bindir="$1" nodebin="$2"
  [ "$(id -u)" = 0 ] || die "a node needs root (containerd, cgroups, the pods' network)"
  for t in iptables conntrack gcc buildah; do
    command -v "$t" >/dev/null || die "$t is missing (hack/deps.sh install node)"
  done
  [ -x "$CNI_BIN/bridge" ] || die "CNI plugins are missing in $CNI_BIN (Debian package containernetworking-plugins)"
  mkdir -p "$RUN"
  if [ -s "$RUN/owner" ] && [ "$(cat "$RUN/owner")" != "$state" ] && [ -d "$(cat "$RUN/owner")/node" ] \
    && pid_alive_in "$(cat "$RUN/owner")" kubelet; then
    die "a node already runs on this machine, for the control plane in $(cat "$RUN/owner")"
  fi
  echo "$state" >"$RUN/owner"
  local d; d="$(node_dir)"
  mkdir -p "$d"
  ensure_bridge
  write_containerd_config
  # containerd finds its shim on PATH.
  PATH="$nodebin:$PATH" start containerd "$nodebin/containerd" --config "$d/containerd.toml"
  wait_ready containerd 60 "$nodebin/ctr" --address "$RUN/containerd.sock" version
  pause_image "$nodebin"

  local kport khealth pport pmetrics
  kport="$(port kubelet)"; khealth="$(port kubelet-healthz)"; pport="$(port kube-proxy-healthz)"; pmetrics="$(port kube-proxy-metrics)"
  write_kubelet_config "$kport" "$khealth"
  write_proxy_config "$pport" "$pmetrics"
  start kubelet "$nodebin/kubelet" --config "$d/kubelet.yaml" --kubeconfig "$state/kubelet.kubeconfig" \
    --root-dir "$d/kubelet" --hostname-override "$(node_name)" --node-ip "$NODE_IP"
  start kube-proxy "$nodebin/kube-proxy" --config "$d/kube-proxy.yaml"
  wait_ready "kubelet" 120 curl -sf "http://127.0.0.1:$khealth/healthz"
  wait_ready "node $(node_name) Ready" 120 node_ready "$bindir"
  log "node $(node_name) ready (pods on $NODE_CIDR via $BRIDGE)"
}

node_ready() {
  "$1/kubectl" --kubeconfig "$state/kubeconfig" get node "$(node_name)" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

cmd_down() {
  local nodebin="$1" name pid
  # Pods first (their shims and network), then the node's daemons.
  for name in kube-proxy kubelet; do stop_process "$name"; done
  if pid_alive containerd; then
    local c
    for c in $("$nodebin/ctr" --address "$RUN/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      "$nodebin/ctr" --address "$RUN/containerd.sock" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
    done
  fi
  stop_process containerd
  awk -v p="$state/node/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # What follows is machine-wide: leave it to the node that still runs, if it is another's.
  local owner=""
  [ -s "$RUN/owner" ] && owner="$(cat "$RUN/owner")"
  if [ -n "$owner" ] && [ "$owner" != "$state" ] && pid_alive_in "$owner" kubelet; then
    return 0
  fi
  # kube-proxy's Service rules (the KUBE-SERVICES chains and the rest).
  "$nodebin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # Shims outlive containerd by design; ours are the ones whose socket lives under $RUN.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $RUN/containerd.sock" || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
  # Pod cgroups the kubelet created (empty once the shims are gone).
  local sub
  for sub in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    if [ -d "$sub" ]; then find "$sub" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  # The bridge plugin's masquerade rules for pods that were killed rather than torn down.
  local rule chain
  iptables -t nat -S POSTROUTING 2>/dev/null | grep -F 'name: \"automend\"' | while read -r rule; do
    chain="${rule##* -j }"
    eval "iptables -t nat ${rule/-A /-D }" 2>/dev/null || true
    iptables -t nat -F "$chain" 2>/dev/null || true
    iptables -t nat -X "$chain" 2>/dev/null || true
  done || true
  # The kubelet's own chains: canaries (it watches them to notice a firewall reload), the hint
  # for kube-proxy, and KUBE-FIREWALL (drops outside traffic to 127.0.0.0/8) with its jumps.
  local table
  for table in mangle nat filter; do
    for chain in INPUT OUTPUT; do iptables -t "$table" -D "$chain" -j KUBE-FIREWALL 2>/dev/null || true; done
    for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  restore_sysctls
  if [ -s "$RUN/owner" ] && [ "$(cat "$RUN/owner")" = "$state" ]; then rm -f "$RUN/owner"; fi
}

case "${1:-}" in
  up) state="$2"; cmd_up "$3" "$4" ;;
  down) state="$2"; cmd_down "$3" ;;
  import) state="$2"; import_image "$3" "$4" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
