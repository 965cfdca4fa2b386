# Shared by hack/cluster.sh and hack/node.sh (sourced): processes started in the background and
# recorded under $state, and the cache folder the built binaries and images live in.
# shellcheck shell=bash
# The sourcing script sets $state (its state folder) before calling these.
# shellcheck disable=SC2154

# shellcheck disable=SC2034 # used by the scripts that source this
cache="${AUTOMEND_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/automend}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive_in() { # <state> <name>: true when the process recorded there is alive and is that state's
  local f="$1/pids/$2" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$1/" || return 1
}

pid_alive() { pid_alive_in "$state" "$1"; } # <name>: the same, for this state

start() { # <name> <command...>
  local name="$1"; shift
  if pid_alive "$name"; then return 0; fi
  mkdir -p "$state/logs" "$state/pids"
  setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name"
}

stop_process() { # <name>: TERM, then KILL after 10 s
  local name="$1" pid
  if pid_alive "$name"; then
    pid="$(cat "$state/pids/$name")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pids/$name"
}

port() { # <name>: the port kept for <name>, picked free the first time
  local f="$state/ports/$1"
  mkdir -p "$state/ports"
  [ -s "$f" ] || free_port >"$f"
  cat "$f"
}

log_tail() { # <name>: the end of a process's log, on stderr (the state folder may be gone later)
  local f="$state/logs/$1.log"
  [ -f "$f" ] || return 0
  printf -- '--- last lines of %s ---\n' "$f" >&2
  tail -n 25 "$f" >&2
}

wait_ready() { # <what> <seconds> <command...>: <what> is a process started by `start`, or a check
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs)) settled=$((SECONDS + 3))
  until "$@" >/dev/null 2>&1; do
    # (Not in its first seconds: until `start`'s child has exec'd, its command line is not yet
    # the one pid_alive recognises.)
    if [ "$SECONDS" -ge "$settled" ] && [ -f "$state/pids/$what" ] && ! pid_alive "$what"; then
      log_tail "$what"
      die "$what exited before it was ready; see $state/logs/$what.log"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "$what"
      die "$what did not become ready within ${secs}s; see $state/logs/"
    fi
    sleep 0.5
  done
}

wait_crds() { # wait (up to 60 s) until the API server serves Automend's CRDs
  # `kubectl wait` fails at once on a CRD whose status has no conditions yet (right after it is
  # created): ask again until the minute is up, then show its answer.
  local crds=(crd/virtualmachines.automend.io crd/configurationprofiles.automend.io
    crd/updaterings.automend.io crd/patchrollouts.automend.io)
  local deadline=$((SECONDS + 60))
  until kubectl wait --for=condition=Established --timeout=60s "${crds[@]}" >/dev/null 2>&1; do
    if [[ $SECONDS -ge $deadline ]]; then
      kubectl wait --for=condition=Established --timeout=1s "${crds[@]}"
      return 1
    fi
    sleep 0.5
  done
}
