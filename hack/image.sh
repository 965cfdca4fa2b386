#!/usr/bin/env bash
# The controller's container image, built with no daemon and no registry: an OCI archive.
#
#   hack/image.sh build [--debug | --binary PATH] [--tag TAG] [--out FILE] [--import]
#       cargo build (--release unless --debug; none with --binary) of the automend binary, on a
#       base made from Debian's packages, as user 65532, named automend:TAG (default: the chart's
#       appVersion); writes FILE (default target/image/automend-TAG.tar) and, with --import, loads
#       it into the local node's containerd (hack/cluster.sh up --node).
#   hack/image.sh scratch-image FILE NAME BINARY PATH UID
#       one static binary on an empty base (the node's pause image)
#
# The base is what the Dockerfile's gcr.io/distroless/cc-debian12:nonroot holds, taken from the
# same Debian packages (base-files, netbase, tzdata, ca-certificates, libc6, libgcc-s1, libgomp1,
# libssl3, libstdc++6) by mmdebstrap's `extract` variant (unpacked, no maintainer scripts, no
# shell), plus the distroless users (root, nobody, nonroot 65532). It is cached in
# $AUTOMEND_CACHE_DIR/images. The image is assembled by buildah (vfs storage under the cache, so
# nothing of the machine's own container storage is touched). tests/scripts.rs keeps the
# Dockerfile and this script saying the same user, entrypoint and command.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=hack/lib.sh
. "$here/lib.sh"

SUITE=bookworm
BASE_PACKAGES='base-files,netbase,tzdata,ca-certificates,libc6,libgcc-s1,libgomp1,libssl3,libstdc++6'
USER_ID=65532
ENTRYPOINT='["/usr/local/bin/automend"]'
CMD='["controller"]'

buildah_() {
  buildah --root "$cache/images/buildah/root" --runroot "$cache/images/buildah/run" --storage-driver vfs "$@"
}

base_rootfs() { # prints the path of the base's tarball, building it once
  local tarball
  tarball="$cache/images/base-$SUITE-$(printf '%s' "$BASE_PACKAGES" | sha256sum | cut -c1-12).tar"
  if [ ! -s "$tarball" ]; then
    log "building the base from Debian's packages ($BASE_PACKAGES)"
    local mirror="${AUTOMEND_DEBIAN_MIRROR:-http://deb.debian.org/debian}" tmp
    tmp="$(mktemp -d)"
    mmdebstrap --quiet --variant=extract --include="$BASE_PACKAGES" "$SUITE" "$tmp/root" "$mirror" >&2
    # The distroless users; no shell on the base, so their shell is /sbin/nologin.
    mkdir -p "$tmp/root/etc" "$tmp/root/home/nonroot" "$tmp/root/tmp"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      "nonroot:x:$USER_ID:$USER_ID:nonroot:/home/nonroot:/sbin/nologin" >"$tmp/root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' "nonroot:x:$USER_ID:" >"$tmp/root/etc/group"
    chown "$USER_ID:$USER_ID" "$tmp/root/home/nonroot"
    chmod 1777 "$tmp/root/tmp"
    # No package manager runs in the image: its database and documentation are dead weight.
    rm -rf "$tmp/root/var/lib/apt" "$tmp/root/var/cache/apt" "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man"
    tar -C "$tmp/root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$tmp"
  fi
  echo "$tarball"
}

commit() { # <container> <archive> <name>
  mkdir -p "$(dirname "$2")"
  rm -f "$2"
  buildah_ commit --quiet --rm --format oci "$1" "oci-archive:$2:$3" >/dev/null
}

cmd_scratch_image() { # <archive> <name> <binary> <path> <uid>
  command -v buildah >/dev/null || die "buildah is missing (Debian package buildah)"
  local c
  c="$(buildah_ from scratch)"
  buildah_ copy --quiet "$c" "$3" "$4" >/dev/null
  buildah_ config --entrypoint "[\"$4\"]" --user "$5:$5" "$c"
  commit "$c" "$1" "$2"
}

cmd_build() {
  local profile=release out="" import=0 binary="" tag=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --debug) profile=debug ;;
      --binary) binary="${2:?--binary needs a path}"; shift ;;
      --tag) tag="${2:?--tag needs a value}"; shift ;;
      --out) out="${2:?--out needs a file}"; shift ;;
      --import) import=1 ;;
      *) die "unknown argument $1 (hack/image.sh build [--debug | --binary PATH] [--tag TAG] [--out FILE] [--import])" ;;
    esac
    shift
  done
  for t in buildah mmdebstrap; do command -v "$t" >/dev/null || die "$t is missing (hack/deps.sh install test)"; done
  local version target
  version="$(awk -F'"' '/^appVersion:/ { print $2 }' "$repo/charts/automend/Chart.yaml")"
  [ -n "$version" ] || die "no appVersion in charts/automend/Chart.yaml"
  tag="${tag:-$version}"
  target="${CARGO_TARGET_DIR:-$repo/target}"
  out="${out:-$target/image/automend-$tag.tar}"
  if [ -z "$binary" ]; then
    log "building the automend binary ($profile)"
    if [ "$profile" = release ]; then
      (cd "$repo" && cargo build --release --locked --bin automend)
    else
      (cd "$repo" && cargo build --locked --bin automend)
    fi
    binary="$target/$profile/automend"
  fi
  [ -x "$binary" ] || die "$binary is not an executable"
  local base; base="$(base_rootfs)"
  local c
  c="$(buildah_ from scratch)"
  buildah_ add --quiet "$c" "$base" / >/dev/null
  buildah_ copy --quiet --chmod 0755 "$c" "$binary" /usr/local/bin/automend >/dev/null
  buildah_ config --user "$USER_ID:$USER_ID" --workingdir /home/nonroot --entrypoint "$ENTRYPOINT" --cmd "$CMD" \
    --label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.source=automend" "$c"
  commit "$c" "$out" "docker.io/library/automend:$tag"
  log "wrote $out (automend:$tag, $(du -h "$out" | cut -f1))"
  if [ "$import" = 1 ]; then
    bash "$here/cluster.sh" import "$out"
    log "imported automend:$tag into the node's containerd"
  fi
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  scratch-image) shift; cmd_scratch_image "$@" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
