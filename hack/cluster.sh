#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, for machines without a container engine.
#
#   hack/cluster.sh build   build (once) etcd, kube-apiserver, kube-controller-manager, kubectl, helm
#   hack/cluster.sh up      start etcd + kube-apiserver + kube-controller-manager; write a kubeconfig
#   hack/cluster.sh down    stop what `up` started (and nothing else)
#   hack/cluster.sh status  say what is running
#   hack/cluster.sh env     print `export` lines for PATH and KUBECONFIG (eval "$(hack/cluster.sh env)")
#
# Binaries are built from the published Go modules of the pinned releases below into
# $AUTOMEND_CACHE_DIR (default ~/.cache/automend), keyed by version, and reused.
# State (certificates, etcd data, logs, pids, kubeconfig) lives in $AUTOMEND_CLUSTER_DIR
# (default <repo>/.local/cluster). Several control planes may run at once in different state folders:
# ports are picked free at the first `up` and kept in the state folder.
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${AUTOMEND_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/automend}"
bindir="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
state="${AUTOMEND_CLUSTER_DIR:-$repo/.local/cluster}"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# build

# Each tool is built in a small wrapper module of ours (hack/tools/<name>) whose go.mod and go.sum
# are committed, so builds are reproducible and verified against the checksums we pinned.
go_build() { # <module dir> <output dir> <ldflags> <packages...>
  local dir="$1" out="$2" ldflags="$3"; shift 3
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local \
    go build -trimpath -ldflags "$ldflags" -o "$out/" "$@")
}

build_kubernetes() {
  local dir="$here/tools/kubernetes" out="$1"
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (first time only; ~10-20 min on 2 cores)"
  go_build "$dir" "$out" "$ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
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
      timed "kube-apiserver, kube-controller-manager, kubectl" build_kubernetes "$tmp"
    fi
    mkdir -p "$bindir"
    for b in "$tmp"/*; do mv -f "$b" "$bindir/"; done
  )
  log "binaries ready in $bindir ($((SECONDS - start))s)"
}

# ---------------------------------------------------------------------------------------------
# certificates and credentials

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

gen_certs() {
  local pki="$state/pki"
  [ -f "$pki/ca.crt" ] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=automend-local-ca" 2>/dev/null
    issue() { # <name> <subject> <extensions>
      openssl req -new -nodes -newkey rsa:2048 -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
        -days 3650 -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    issue apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
      'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
      'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local')"
    local client='basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
    issue admin "/O=system:masters/CN=automend-admin" "$client"
    issue controller-manager "/CN=system:kube-controller-manager" "$client"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  )
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

pid_alive() { # <name>: true when the recorded process is alive and is ours (its command line names our state)
  local f="$state/pids/$1" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$state/" || return 1
}

start() { # <name> <command...>
  local name="$1"; shift
  if pid_alive "$name"; then return 0; fi
  mkdir -p "$state/logs" "$state/pids"
  setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name"
}

port() { # <name>: the port kept for <name>, picked free the first time
  local f="$state/ports/$1"
  mkdir -p "$state/ports"
  [ -s "$f" ] || free_port >"$f"
  cat "$f"
}

wait_ready() { # <what> <seconds> <command...>
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "$what did not become ready within ${secs}s; see $state/logs/"
    fi
    sleep 0.5
  done
}

kubectl_admin() { "$bindir/kubectl" --kubeconfig "$state/kubeconfig" "$@"; }

cmd_up() {
  cmd_build
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  gen_certs
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

  start kube-apiserver "$bindir/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
    --client-ca-file "$state/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$state/pki/sa.pub" --service-account-signing-key-file "$state/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode RBAC --allow-privileged=true \
    --cert-dir "$state/pki/generated"
  wait_ready kube-apiserver 120 curl -sf --cacert "$state/pki/ca.crt" \
    --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" "https://127.0.0.1:$api_port/readyz"

  start kube-controller-manager "$bindir/kube-controller-manager" \
    --kubeconfig "$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$state/pki/generated-kcm" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file "$state/pki/sa.key" --root-ca-file "$state/pki/ca.crt" \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route'
  wait_ready kube-controller-manager 60 curl -sfk "https://127.0.0.1:$kcm_port/healthz"

  # The default ServiceAccount appears once the controller manager runs; wait so that
  # anything applied next (Pods in dry runs, Helm hooks) finds it.
  wait_ready "default ServiceAccount" 60 kubectl_admin get serviceaccount default -n default
  log "control plane ready: KUBECONFIG=$state/kubeconfig (logs in $state/logs)"
}

cmd_down() {
  local name pid stopped=0
  for name in kube-controller-manager kube-apiserver etcd; do
    if pid_alive "$name"; then
      pid="$(cat "$state/pids/$name")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
      stopped=1
    fi
    rm -f "$state/pids/$name"
  done
  if [ "$stopped" = 1 ]; then log "stopped the control plane in $state"; else log "nothing running in $state"; fi
  if [ "${1:-}" = "--purge" ]; then rm -rf "$state"; log "removed $state"; fi
}

cmd_status() {
  local name rc=0
  for name in etcd kube-apiserver kube-controller-manager; do
    if pid_alive "$name"; then echo "$name: running (pid $(cat "$state/pids/$name"))"; else echo "$name: stopped"; rc=1; fi
  done
  return "$rc"
}

cmd_env() {
  # shellcheck disable=SC2016 # $PATH is for the shell that evals this
  printf 'export PATH=%q:"$PATH"\n' "$bindir"
  printf 'export KUBECONFIG=%q\n' "$state/kubeconfig"
}

case "${1:-}" in
  build) cmd_build ;;
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  bindir) echo "$bindir" ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
