# Sourced by the bench scripts that run frontdoor as the harness's candidate on their own.
# Needs `root` (the checkout) set by the caller.

# start_candidate BIN LISTEN UPSTREAM [CPU]: runs BIN through benches/frontdoor-candidate.sh in
# the background (pinned to CPU when given), with a new temporary directory as `run`; stops it
# and removes the directory when the script exits; returns once it answers GET /. Sets
# `candidate` to the proxy's pid (the candidate script and taskset exec, so the job's pid is it).
start_candidate() {
  local bin=$1 listen=$2 upstream=$3 cpu=${4:-}
  local pin=()
  if [ -n "$cpu" ]; then pin=(taskset -c "$cpu"); fi
  run=$(mktemp -d)
  "${pin[@]}" "$root/benches/frontdoor-candidate.sh" "$bin" "$listen" "$upstream" "$run" \
    >"$run/stdout" 2>"$run/stderr" &
  candidate=$!
  trap 'kill $candidate 2>/dev/null || true; rm -rf "$run"' EXIT
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://$listen/" && return 0
    sleep 0.1
  done
}
