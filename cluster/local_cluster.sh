#!/usr/bin/env bash
# A real multi-node Ray cluster on one host: a head on 127.0.0.1 and N worker nodes on
# 127.0.0.2, 127.0.0.3, ... each a separate raylet with its own CPU/memory limits. Everything
# listens on loopback; token authentication stays on (a token in ~/.ray/auth_token is created
# once and used by every node and client on this host).
#
#   cluster/local_cluster.sh start [--workers N] [--cpus C] [--memory-gb M] [--port P]
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh stop-node 2     # stop worker node 2 (the one on 127.0.0.3)
#   cluster/local_cluster.sh stop
#
# Then: export RAY_ADDRESS=127.0.0.1:P RAY_AUTH_MODE=token; orch run recipe.yaml
set -euo pipefail

cmd=${1:-}; shift || true
WORKERS=${ORCH_CLUSTER_WORKERS:-1}
CPUS=${ORCH_CLUSTER_CPUS:-2}
MEMORY_GB=${ORCH_CLUSTER_MEMORY_GB:-6}
PORT=${ORCH_CLUSTER_PORT:-6390}
STATE=${ORCH_CLUSTER_STATE:-/tmp/orch-local-cluster}

while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --memory-gb) MEMORY_GB=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --state) STATE=$2; shift 2 ;;
    *) break ;;
  esac
done

export RAY_AUTH_MODE=token
# Ray's session folder holds AF_UNIX sockets, whose paths may not exceed 107 bytes: keep it short and
# out of $STATE (which may be deep, e.g. a pytest tmp_path).
RAY_TMP=${ORCH_CLUSTER_RAY_TMP:-/tmp/orchray-$PORT}
mem_bytes=$(python3 -c "print(int(float('$MEMORY_GB') * 1024**3))")
obj_bytes=$(python3 -c "print(int(float('$MEMORY_GB') * 1024**3 * 0.3))")

port_or_free() {  # port_or_free PREFERRED: PREFERRED if nothing listens on it, else a free port
  python3 - "$1" <<'PY'
import socket, sys
want = int(sys.argv[1])
for port in (want, 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
}

ensure_token() {
  if [ ! -s "$HOME/.ray/auth_token" ]; then
    ray get-auth-token --generate >/dev/null
  fi
}

fail_node() {  # fail_node INDEX LOG: say which node failed and show why
  echo "error: node $1 (127.0.0.$(( $1 + 1 ))) did not start; the end of $2:" >&2
  tail -n 40 "$2" >&2
  for f in "$RAY_TMP"/session_latest/logs/dashboard_*.err "$RAY_TMP"/session_latest/logs/dashboard_*.log; do
    [ -s "$f" ] && grep -q -i -E "error|exception|traceback" "$f" && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

start_node() {  # start_node INDEX   (0 = head)
  local i=$1 ip="127.0.0.$(( $1 + 1 ))"
  local tmp="$STATE/node$i"
  mkdir -p "$tmp"
  if [ "$i" = 0 ]; then
    # The head's fixed default ports (dashboard 8265, client server 10001, agent 52365) may be
    # taken by another Ray on this host (a laptop's own, or one still shutting down): fall back
    # to free ports instead of failing, and record the dashboard's address for `ray job submit`.
    DASHBOARD_PORT=$(port_or_free "${ORCH_CLUSTER_DASHBOARD_PORT:-8265}")
    echo "http://127.0.0.1:$DASHBOARD_PORT" >"$STATE/dashboard"
    ray start --head --node-ip-address="$ip" --port="$PORT" --num-cpus="$CPUS" --num-gpus=0 \
      --memory="$mem_bytes" --object-store-memory="$obj_bytes" \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
      --ray-client-server-port="$(port_or_free 10001)" --dashboard-agent-listen-port="$(port_or_free 52365)" \
      --disable-usage-stats \
      --temp-dir="$RAY_TMP" >"$tmp/start.log" 2>&1 || fail_node "$i" "$tmp/start.log"
  else
    ray start --address="127.0.0.1:$PORT" --node-ip-address="$ip" --num-cpus="$CPUS" --num-gpus=0 \
      --memory="$mem_bytes" --object-store-memory="$obj_bytes" --disable-usage-stats \
      --resources="{\"node:worker$i\": 1}" >"$tmp/start.log" 2>&1 || fail_node "$i" "$tmp/start.log"
  fi
  echo "$ip" >"$tmp/ip"
}

node_pids() {  # the raylet and its children for the node on IP
  local ip=$1
  pgrep -f "raylet.*--node_ip_address=$ip( |$)" || true
}

case "$cmd" in
  start)
    ensure_token
    mkdir -p "$STATE"
    echo "$PORT" >"$STATE/port"
    echo "$RAY_TMP" >"$STATE/ray_tmp"
    start_node 0
    for i in $(seq 1 "$WORKERS"); do start_node "$i"; done
    echo "Ray cluster: head 127.0.0.1:$PORT + $WORKERS worker node(s), $CPUS CPUs and ${MEMORY_GB} GiB each"
    echo "  export RAY_ADDRESS=127.0.0.1:$PORT RAY_AUTH_MODE=token"
    echo "  dashboard and Ray Jobs API: $(cat "$STATE/dashboard")"
    ;;
  status)
    ray status --address="127.0.0.1:$(cat "$STATE/port")"
    ;;
  stop-node)
    i=${1:?which worker node (1..N)}
    ip="127.0.0.$(( i + 1 ))"
    for pid in $(node_pids "$ip"); do
      pkill -TERM -P "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
    done
    echo "stopped worker node $i ($ip)"
    ;;
  stop)
    # Only this cluster's processes (others on the host, e.g. a laptop's own Ray, are left alone).
    port=$(cat "$STATE/port" 2>/dev/null || echo "$PORT")
    ray_tmp=$(cat "$STATE/ray_tmp" 2>/dev/null || echo "$RAY_TMP")
    for sig in TERM KILL; do
      pkill -"$sig" -f "127\.0\.0\.1:$port( |$|,)" 2>/dev/null || true
      pkill -"$sig" -f "gcs_server_port=$port( |$)" 2>/dev/null || true
      pkill -"$sig" -f -- "--temp-dir=$ray_tmp" 2>/dev/null || true
      pkill -"$sig" -f "$ray_tmp/" 2>/dev/null || true
      [ "$sig" = TERM ] && sleep 2
    done
    rm -rf "$STATE" "$ray_tmp"
    echo "stopped"
    ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
