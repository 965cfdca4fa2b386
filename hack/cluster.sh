#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, for machines without a container engine.
#
#   hack/cluster.sh build [--node]  build (once) etcd, kube-apiserver, kube-controller-manager, kubectl,
#                                   helm; with --node also kube-scheduler, kubelet, kube-proxy, containerd
#   hack/cluster.sh up [--node] [--guest-webhook]
#                                   start etcd + kube-apiserver + kube-controller-manager; write a
#                                   kubeconfig. With --node (root only) also kube-scheduler and one node
#                                   (containerd, kubelet, kube-proxy; see hack/node.sh) that runs Pods.
#                                   With --guest-webhook the API server asks the controller about guest
#                                   requests (its authorization webhook); `env` then also exports the
#                                   controller's settings for it (--guest-authorization=webhook)
#   hack/cluster.sh down [--purge]  stop what `up` started (and nothing else)
#   hack/cluster.sh status          say what is running
#   hack/cluster.sh env             print `export` lines for PATH and KUBECONFIG (eval "$(hack/cluster.sh env)")
#   hack/cluster.sh import ARCHIVE  load an OCI image archive into the node's containerd
#
# Binaries are built from the published Go modules of the pinned releases below into
# $AUTOMEND_CACHE_DIR (default ~/.cache/automend), keyed by version, and reused.
# State (certificates, etcd data, logs, pids, kubeconfig) lives in $AUTOMEND_CLUSTER_DIR
# (default <repo>/.local/cluster). Several control planes may run at once in different state folders:
# ports are picked free at the first `up` and kept in the state folder. Only one of them may have
# a node.
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
CONTAINERD_VERSION=v2.2.9
RUNC_VERSION=v1.3.6

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
state="${AUTOMEND_CLUSTER_DIR:-$repo/.local/cluster}"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=hack/lib.sh
. "$here/lib.sh"
bindir="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
nodebin="$cache/bin/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION"

# ---------------------------------------------------------------------------------------------
# build

# Each tool is built in a small wrapper module of ours (hack/tools/<name>) whose go.mod and go.sum
# are committed, so builds are reproducible and verified against the checksums we pinned.
go_build() { # <module dir> <output dir> <ldflags> <packages...>
  local dir="$1" out="$2" ldflags="$3"; shift 3
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local \
    go build -trimpath -ldflags "$ldflags" -o "$out/" "$@")
}

build_kubernetes() { # <output dir> <packages...>
  local dir="$here/tools/kubernetes" out="$1"; shift
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building ${*##*/} $K8S_VERSION (first time only)"
  go_build "$dir" "$out" "$ldflags" "$@"
}

build_containerd() {
  log "building containerd $CONTAINERD_VERSION"
  # No btrfs, devmapper or zfs snapshotters: they need cgo, and the node uses overlayfs.
  (cd "$here/tools/containerd" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local \
    go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" -o "$1/" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr)
}

build_runc() {
  log "building runc $RUNC_VERSION"
  # runc needs cgo (its nsenter is C) and libseccomp for seccomp profiles (RuntimeDefault).
  (cd "$here/tools/runc" && CGO_ENABLED=1 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local \
    go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$1/" \
    github.com/opencontainers/runc)
}

build_etcd() {
  log "building etcd $ETCD_VERSION"
  go_build "$here/tools/etcd" "$1" "-s -w" .
  mv "$1/etcd-wrapper" "$1/etcd"
}

build_helm() {
  log "building helm $HELM_VERSION"
  go_build "$here/tools/helm" "$1" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    helm.sh/helm/v3/cmd/helm
}

timed() { # <what> <command...>: run, then log how long it took
  local what="$1" start=$SECONDS; shift
  "$@"
  log "$what built in $((SECONDS - start))s"
}

cmd_build() {
  command -v go >/dev/null || die "the Go toolchain is needed to build the control plane binaries"
  local want=(etcd kube-apiserver kube-controller-manager kubectl helm) missing=0 b
  for b in "${want[@]}"; do [ -x "$bindir/$b" ] || missing=1; done
  if [ "$missing" = 0 ]; then return 0; fi
  log "first run: building the control plane from published Go modules into $bindir"
  log "(downloads about 250 MB of Go modules once; 8-15 minutes on 2 cores)"
  local tmp="$bindir.tmp.$$" start=$SECONDS
  # A subshell, so the clean-up trap ends with the build (a RETURN trap would outlive this
  # function and fire on the next function's return, with `tmp` out of scope under `set -u`).
  (
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp"
    [ -x "$bindir/etcd" ] || timed etcd build_etcd "$tmp"
    [ -x "$bindir/helm" ] || timed helm build_helm "$tmp"
    if [ ! -x "$bindir/kube-apiserver" ] || [ ! -x "$bindir/kube-controller-manager" ] || [ ! -x "$bindir/kubectl" ]; then
      timed "kube-apiserver, kube-controller-manager, kubectl" build_kubernetes "$tmp" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
    fi
    mkdir -p "$bindir"
    for b in "$tmp"/*; do mv -f "$b" "$bindir/"; done
  )
  log "binaries ready in $bindir ($((SECONDS - start))s)"
}

cmd_build_node() {
  local want=(kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc) missing=0 b
  for b in "${want[@]}"; do [ -x "$nodebin/$b" ] || missing=1; done
  if [ "$missing" = 0 ]; then return 0; fi
  local tmp="$nodebin.tmp.$$"
  (
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp"
    timed "kube-scheduler, kubelet, kube-proxy" build_kubernetes "$tmp" \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
    timed containerd build_containerd "$tmp"
    timed runc build_runc "$tmp"
    mkdir -p "$nodebin"
    for b in "$tmp"/*; do mv -f "$b" "$nodebin/"; done
  )
  log "node binaries ready in $nodebin"
}

# ---------------------------------------------------------------------------------------------
# certificates and credentials

NODE_IP=10.244.0.1 # the node's bridge gateway (hack/node.sh); the API server's address for pods
CLIENT='basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'

issue() { # <name> <subject> <extensions>: a key and a certificate signed by the local CA, in $state/pki
  local pki="$state/pki"
  openssl req -new -nodes -newkey rsa:2048 -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/$1.crt" -days 3650 -extfile "$pki/$1.ext" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
  chmod 600 "$pki/$1.key"
}

gen_certs() {
  local pki="$state/pki"
  [ -f "$pki/ca.crt" ] && return 0
  mkdir -p "$pki"
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 \
    -subj "/CN=automend-local-ca" 2>/dev/null
  issue apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
    "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
  issue admin "/O=system:masters/CN=automend-admin" "$CLIENT"
  issue controller-manager "/CN=system:kube-controller-manager" "$CLIENT"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

gen_node_certs() { # the node's and the scheduler's identities
  local pki="$state/pki"
  if ! openssl x509 -in "$pki/apiserver.crt" -noout -ext subjectAltName | grep -qF "IP Address:$NODE_IP"; then
    # State from before nodes existed: pods reach the API server at the node's address.
    issue apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
      'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
      "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
  fi
  [ -f "$pki/kubelet.crt" ] && return 0
  issue kube-scheduler "/CN=system:kube-scheduler" "$CLIENT"
  issue kube-proxy "/CN=system:kube-proxy" "$CLIENT"
  issue kubelet-client "/O=system:nodes/CN=system:node:automend-node" "$CLIENT"
  issue kubelet "/CN=automend-node" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
    "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,DNS:automend-node")"
}

write_kubeconfig() { # <file> <user> <cert> <key>
  local port; port="$(cat "$state/ports/apiserver")"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: automend-local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $state/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $3
    client-key: $4
contexts:
- name: automend-local
  context:
    cluster: automend-local
    user: $2
    namespace: default
current-context: automend-local
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------------------------------------
# processes

kubectl_admin() { "$bindir/kubectl" --kubeconfig "$state/kubeconfig" "$@"; }

# The guest authorizer (--guest-webhook): the API server's AuthorizationConfiguration sends
# reviews of guest ServiceAccounts' resource requests to the controller's HTTPS server first
# (failurePolicy NoOpinion: when it cannot answer, RBAC decides as without it), then RBAC.
write_guest_webhook() {
  local pki="$state/pki" port; port="$(port guest-authorizer)"
  [ -f "$pki/guest-authorizer.crt" ] || issue guest-authorizer "/CN=automend-guest-authorizer" "$(printf '%s\n' \
    'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
    'subjectAltName=IP:127.0.0.1,DNS:localhost')"
  cat >"$state/guest-authorizer.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: automend-guest-authorizer
  cluster:
    server: https://127.0.0.1:$port/authorize
    certificate-authority: $pki/ca.crt
users:
- name: kube-apiserver
  user: {}
contexts:
- name: automend-guest-authorizer
  context:
    cluster: automend-guest-authorizer
    user: kube-apiserver
current-context: automend-guest-authorizer
EOF
  cat >"$state/authorization.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AuthorizationConfiguration
authorizers:
- type: Node
  name: node
- type: Webhook
  name: automend-guests
  webhook:
    timeout: 3s
    subjectAccessReviewVersion: v1
    matchConditionSubjectAccessReviewVersion: v1
    failurePolicy: NoOpinion
    authorizedTTL: 5m
    unauthorizedTTL: 30s
    connectionInfo:
      type: KubeConfigFile
      kubeConfigFile: $state/guest-authorizer.kubeconfig
    matchConditions:
    - expression: "'system:serviceaccounts' in request.groups"
    - expression: "request.user.matches('^system:serviceaccount:[^:]+:automend-guest-[^:]+$')"
    - expression: "has(request.resourceAttributes)"
- type: RBAC
  name: rbac
EOF
}

cmd_up() {
  local node=0 webhook=0 arg
  for arg in "$@"; do
    case "$arg" in
      --node) node=1 ;;
      --guest-webhook) webhook=1 ;;
      *) die "up: unknown option $arg (--node, --guest-webhook)" ;;
    esac
  done
  cmd_build
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  gen_certs
  if [ "$webhook" = 1 ]; then
    if pid_alive kube-apiserver && [ ! -f "$state/guest-webhook-mode" ]; then
      die "this control plane was started without --guest-webhook; stop it first (hack/cluster.sh down)"
    fi
    write_guest_webhook
    touch "$state/guest-webhook-mode"
  elif [ -f "$state/guest-webhook-mode" ] && ! pid_alive kube-apiserver; then
    rm -f "$state/guest-webhook-mode"
  fi
  local authz=(--authorization-mode 'Node,RBAC')
  [ -f "$state/guest-webhook-mode" ] && authz=(--authorization-config "$state/authorization.yaml")
  if [ "$node" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "--node needs root (containerd, cgroups, the pods' network)"
    if pid_alive kube-apiserver && [ ! -f "$state/node-mode" ]; then
      die "this control plane was started without --node; stop it first (hack/cluster.sh down)"
    fi
    cmd_build_node
    gen_node_certs
    touch "$state/node-mode"
  elif [ -f "$state/node-mode" ] && ! pid_alive kube-apiserver; then
    rm -f "$state/node-mode"
  fi
  local etcd_port etcd_peer api_port kcm_port
  etcd_port="$(port etcd)"; etcd_peer="$(port etcd-peer)"; api_port="$(port apiserver)"; kcm_port="$(port controller-manager)"
  write_kubeconfig "$state/kubeconfig" automend-admin "$state/pki/admin.crt" "$state/pki/admin.key"
  write_kubeconfig "$state/controller-manager.kubeconfig" system:kube-controller-manager \
    "$state/pki/controller-manager.crt" "$state/pki/controller-manager.key"

  start etcd "$bindir/etcd" --name automend --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "automend=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --quota-backend-bytes 4294967296 \
    --log-level warn
  wait_ready etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"

  # With a node, pods reach the API server through the `kubernetes` Service, whose endpoint is
  # the advertised address: the node's bridge gateway. Without one, loopback only.
  local listen=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1)
  if [ -f "$state/node-mode" ]; then
    listen=(--bind-address 0.0.0.0 --advertise-address "$NODE_IP" --kubelet-preferred-address-types InternalIP
      --kubelet-client-certificate "$state/pki/admin.crt" --kubelet-client-key "$state/pki/admin.key"
      --kubelet-certificate-authority "$state/pki/ca.crt")
  fi
  start kube-apiserver "$bindir/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    "${listen[@]}" --secure-port "$api_port" \
    --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
    --client-ca-file "$state/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$state/pki/sa.pub" --service-account-signing-key-file "$state/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    "${authz[@]}" --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --cert-dir "$state/pki/generated"
  wait_ready kube-apiserver 120 curl -sf --cacert "$state/pki/ca.crt" \
    --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" "https://127.0.0.1:$api_port/readyz"

  # Node lifecycle (it lifts the not-ready taint from a node that became Ready) only with a node.
  local controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route'
  [ -f "$state/node-mode" ] && controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  start kube-controller-manager "$bindir/kube-controller-manager" \
    --kubeconfig "$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$state/pki/generated-kcm" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$state/pki/sa.key" --root-ca-file "$state/pki/ca.crt" \
    --controllers "$controllers"
  wait_ready kube-controller-manager 60 curl -sfk "https://127.0.0.1:$kcm_port/healthz"

  # The default ServiceAccount appears once the controller manager runs; wait so that
  # anything applied next (Pods in dry runs, Helm hooks) finds it.
  wait_ready "default ServiceAccount" 60 kubectl_admin get serviceaccount default -n default

  if [ -f "$state/node-mode" ]; then
    local sched_port; sched_port="$(port kube-scheduler)"
    write_kubeconfig "$state/kube-scheduler.kubeconfig" system:kube-scheduler \
      "$state/pki/kube-scheduler.crt" "$state/pki/kube-scheduler.key"
    write_kubeconfig "$state/kubelet.kubeconfig" system:node:automend-node \
      "$state/pki/kubelet-client.crt" "$state/pki/kubelet-client.key"
    write_kubeconfig "$state/kube-proxy.kubeconfig" system:kube-proxy \
      "$state/pki/kube-proxy.crt" "$state/pki/kube-proxy.key"
    start kube-scheduler "$nodebin/kube-scheduler" --kubeconfig "$state/kube-scheduler.kubeconfig" \
      --authentication-kubeconfig "$state/kube-scheduler.kubeconfig" \
      --authorization-kubeconfig "$state/kube-scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false
    wait_ready kube-scheduler 60 curl -sfk "https://127.0.0.1:$sched_port/healthz"
    bash "$here/node.sh" up "$state" "$bindir" "$nodebin"
  fi
  log "control plane ready: KUBECONFIG=$state/kubeconfig (logs in $state/logs)"
}

cmd_down() {
  local name stopped=0
  if [ -d "$state" ] && [ -f "$state/node-mode" ]; then
    bash "$here/node.sh" down "$state" "$nodebin" || log "the node did not stop cleanly; stopping the control plane anyway"
  fi
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid_alive "$name" && stopped=1
    stop_process "$name"
  done
  if [ "$stopped" = 1 ]; then log "stopped the control plane in $state"; else log "nothing running in $state"; fi
  if [ "${1:-}" = "--purge" ]; then rm -rf "$state"; log "removed $state"; fi
}

cmd_status() {
  local name rc=0 names=(etcd kube-apiserver kube-controller-manager)
  [ -f "$state/node-mode" ] && names+=(kube-scheduler containerd kubelet kube-proxy)
  for name in "${names[@]}"; do
    if pid_alive "$name"; then echo "$name: running (pid $(cat "$state/pids/$name"))"; else echo "$name: stopped"; rc=1; fi
  done
  return "$rc"
}

cmd_env() {
  # shellcheck disable=SC2016 # $PATH is for the shell that evals this
  printf 'export PATH=%q:"$PATH"\n' "$bindir"
  printf 'export KUBECONFIG=%q\n' "$state/kubeconfig"
  if [ -f "$state/guest-webhook-mode" ]; then
    printf 'export AUTOMEND_GUEST_AUTHORIZATION=webhook\n'
    printf 'export AUTOMEND_AUTHORIZER_ADDR=127.0.0.1:%s\n' "$(cat "$state/ports/guest-authorizer")"
    printf 'export AUTOMEND_AUTHORIZER_CERT=%q\n' "$state/pki/guest-authorizer.crt"
    printf 'export AUTOMEND_AUTHORIZER_KEY=%q\n' "$state/pki/guest-authorizer.key"
  fi
}

case "${1:-}" in
  build) cmd_build; if [ "${2:-}" = "--node" ]; then cmd_build_node; fi ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  bindir) echo "$bindir" ;;
  nodebin) echo "$nodebin" ;;
  import) [ -f "$state/node-mode" ] || die "no node in $state (hack/cluster.sh up --node)"
    bash "$here/node.sh" import "$state" "$nodebin" "${2:?an OCI archive}" ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
