# Sourced by the bench scripts that run frontdoor as the harness's candidate on their own.
# Needs `root` (the checkout) set by the caller.

# start_candidate BIN LISTEN UPSTREAM [CPU]: runs BIN through benches/frontdoor-candidate.sh in
# the background (pinned to CPU when given), with a new temporary directory as `run`; stops it
# and removes the directory when the script exits; returns once it answers GET / (fails when
# something else answers on LISTEN already, or the candidate exits or does not answer within
# 10 s). Sets
# `candidate` to the proxy's pid (the candidate script and taskset exec, so the job's pid is it).
start_candidate() {
  local bin=$1 listen=$2 upstream=$3 cpu=${4:-}
  local pin=()
  if [ -n "$cpu" ]; then pin=(taskset -c "$cpu"); fi
  if curl -s -o /dev/null "http://$listen/"; then
    echo "something already answers on $listen: stop it or set LISTEN" >&2
    return 1
  fi
  run=$(mktemp -d)
  "${pin[@]}" "$root/benches/frontdoor-candidate.sh" "$bin" "$listen" "$upstream" "$run" \
    >"$run/stdout" 2>"$run/stderr" &
  candidate=$!
  trap 'kill $candidate 2>/dev/null || true; rm -rf "$run"' EXIT
  for _ in $(seq 100); do
    # Alive and answering (nothing else answered there before it started).
    if ! kill -0 "$candidate" 2>/dev/null; then
      echo "the candidate exited (is $listen in use?):" >&2
      cat "$run/stderr" >&2
      return 1
    fi
    curl -s -o /dev/null "http://$listen/" && return 0
    sleep 0.1
  done
  echo "the candidate did not answer on $listen" >&2
  return 1
}
