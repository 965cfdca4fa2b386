#!/usr/bin/env bash
# What the demo and the tests need on the machine, in one list shared by hack/demo.sh, hack/test.sh
# and .ci/run.
#
#   hack/deps.sh check   demo|node|test   list what is missing (exit 1 if anything is)
#   hack/deps.sh install demo|node|test   install what is missing with apt-get when running as root;
#                                    otherwise print the exact command to run and exit 1
#
# `demo` is what the control plane and the demo use; `node` what a node of ours (hack/cluster.sh
# up --node) and the offline image (hack/image.sh) need: iptables and conntrack for kube-proxy, the
# CNI plugins, gcc, pkg-config and libseccomp's headers to build runc and the pause image, buildah
# and mmdebstrap for images; `test` is all of that plus the package managers and systemd that the
# guest agent's tests drive on sandboxed roots, shellcheck, and what the booted-guest suite needs
# (systemd-nspawn, iproute2 for the guests' network namespace). An entry starting with / is a
# file rather than a command. Go and Rust are toolchains, not Debian packages: they are checked,
# never installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# command -> Debian package
declare -A PACKAGE=(
  [openssl]=openssl [curl]=curl [python3]=python3 [jq]=jq [setsid]=util-linux
  [dpkg-deb]=dpkg [dpkg-scanpackages]=dpkg-dev [apt-get]=apt [systemctl]=systemd
  [dnf]=dnf [rpm]=rpm [rpmbuild]=rpm [createrepo_c]=createrepo-c [modifyrepo_c]=createrepo-c
  [shellcheck]=shellcheck [systemd-nspawn]=systemd-container [mmdebstrap]=mmdebstrap
  [nsenter]=util-linux [flock]=util-linux [ip]=iproute2 [pgrep]=procps
  [iptables]=iptables [conntrack]=conntrack [buildah]=buildah [gcc]=gcc [pkg-config]=pkg-config
  [/usr/lib/cni/bridge]=containernetworking-plugins [/usr/include/seccomp.h]=libseccomp-dev
)
DEMO=(openssl curl python3 jq setsid)
# shellcheck disable=SC2034 # read through a nameref in missing()
NODE=("${DEMO[@]}" ip iptables conntrack buildah mmdebstrap gcc pkg-config /usr/lib/cni/bridge
  /usr/include/seccomp.h)
# shellcheck disable=SC2034 # read through a nameref in missing()
TEST=("${NODE[@]}" dpkg-deb dpkg-scanpackages apt-get systemctl dnf rpm rpmbuild createrepo_c
  modifyrepo_c shellcheck systemd-nspawn nsenter flock pgrep)

say() { printf '[deps] %s\n' "$*" >&2; }

# The Go version the control plane's modules ask for (builds run with GOTOOLCHAIN=local).
go_wanted() {
  awk '$1 == "go" { print $2; exit }' "$here/tools/kubernetes/go.mod"
}

# Whether version $1 >= $2 (dotted numbers).
version_ge() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

toolchains() { # prints problems, one per line
  local want have
  want="$(go_wanted)"
  if ! command -v go >/dev/null; then
    echo "Go $want or newer is needed to build the control plane (https://go.dev/dl; Debian's golang is older)"
  else
    have="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
    version_ge "${have:-0}" "$want" || echo "Go $want or newer is needed to build the control plane; found $have"
  fi
  command -v cargo >/dev/null || echo "Rust (cargo) is needed: https://rustup.rs"
  return 0
}

missing() { # <set>: the missing commands of a set, one per line
  local set="$1" t
  local -n list="$set"
  for t in "${list[@]}"; do
    case "$t" in
      /*) [ -e "$t" ] || echo "$t" ;;
      *) command -v "$t" >/dev/null || echo "$t" ;;
    esac
  done
}

packages_for() { # <commands...>: their Debian packages, once each
  local t
  for t in "$@"; do echo "${PACKAGE[$t]}"; done | sort -u | tr '\n' ' '
}

main() {
  local verb="${1:-}" set
  case "${2:-}" in
    demo) set=DEMO ;;
    node) set=NODE ;;
    test) set=TEST ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
  local problems; problems="$(toolchains)"
  if [ -n "$problems" ]; then
    while IFS= read -r p; do say "$p"; done <<<"$problems"
    exit 1
  fi
  local -a need
  mapfile -t need < <(missing "$set")
  if [ "${#need[@]}" -eq 0 ]; then return 0; fi
  local pkgs; pkgs="$(packages_for "${need[@]}")"
  case "$verb" in
    check)
      say "missing: ${need[*]} (Debian packages: $pkgs)"
      exit 1
      ;;
    install)
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing $pkgs(for ${need[*]})"
        # shellcheck disable=SC2086 # one word per package
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
        mapfile -t need < <(missing "$set")
        if [ "${#need[@]}" -gt 0 ]; then
          say "still missing after installing: ${need[*]}"
          exit 1
        fi
      else
        say "missing: ${need[*]}. Install them with:"
        say "  sudo apt-get update && sudo apt-get install -y $pkgs"
        exit 1
      fi
      ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
}

main "$@"
