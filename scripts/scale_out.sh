#!/usr/bin/env bash
# Start K `python -m tts_server` instances on one model plus HAProxy in front of them, all in the
# foreground; Ctrl-C (or SIGTERM) drains the instances and stops everything. Manual use only: in
# production run each instance and HAProxy under a supervisor (see deploy/haproxy/README.md).
#
#   bash scripts/scale_out.sh MODEL_DIR [K] [-- extra tts_server flags...]
#
# Environment (defaults in brackets):
#   BASE_PORT [8001]   instance i listens on 127.0.0.1:BASE_PORT+i-1
#   FRONT [127.0.0.1:8000]   HAProxy frontend      STATS [127.0.0.1:8404]   HAProxy stats page
#   MAX_NUM_SEQS [16]  each instance's --max-num-seqs
#   CAP [2*MAX_NUM_SEQS]  each instance's --max-concurrent-connections = HAProxy maxconn per server
#   DEVICE [auto]      --device of every instance; DEVICES="cuda:0 cuda:1" gives instance i the i-th
#   PYTHON [python]    interpreter with the server installed (e.g. .venv/bin/python)
#   LOG_DIR [out/scale_out]  one log file per instance, haproxy.cfg
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
MODEL=$1; shift
K=2
if [[ $# -gt 0 && "$1" != "--" ]]; then K=$1; shift; fi
if [[ $# -gt 0 && "$1" == "--" ]]; then shift; fi
EXTRA=("$@")

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python}
BASE_PORT=${BASE_PORT:-8001}
FRONT=${FRONT:-127.0.0.1:8000}
STATS=${STATS:-127.0.0.1:8404}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-16}
CAP=${CAP:-$((2 * MAX_NUM_SEQS))}
DEVICE=${DEVICE:-auto}
read -r -a DEVICE_LIST <<< "${DEVICES:-}"
LOG_DIR=${LOG_DIR:-$ROOT/out/scale_out}

HAPROXY=$(command -v haproxy || true)
[[ -z "$HAPROXY" && -x /usr/sbin/haproxy ]] && HAPROXY=/usr/sbin/haproxy
if [[ -z "$HAPROXY" ]]; then
    echo "haproxy is not installed: apt-get install -y haproxy" >&2
    exit 1
fi
mkdir -p "$LOG_DIR"

PIDS=()
cleanup() {
    trap - INT TERM EXIT
    echo "stopping: draining ${#PIDS[@]} process(es)" >&2
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

SERVERS=()
for ((i = 0; i < K; i++)); do
    port=$((BASE_PORT + i))
    dev=${DEVICE_LIST[$i]:-$DEVICE}
    SERVERS+=("127.0.0.1:$port")
    # setsid: the terminal's Ctrl-C reaches only this script, which sends each process one SIGTERM
    # (a server that got two signals would cancel its streams at once instead of draining).
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" setsid "$PYTHON" -m tts_server --model "$MODEL" --device "$dev" \
        --host 127.0.0.1 --port "$port" --max-num-seqs "$MAX_NUM_SEQS" --max-concurrent-connections "$CAP" \
        "${EXTRA[@]}" > "$LOG_DIR/tts$((i + 1)).log" 2>&1 &
    PIDS+=($!)
    echo "tts$((i + 1)): 127.0.0.1:$port on $dev (pid $!, log $LOG_DIR/tts$((i + 1)).log)" >&2
done

echo "waiting for every instance's /ready ..." >&2
for ((i = 0; i < K; i++)); do
    until curl -sf "http://${SERVERS[$i]}/ready" > /dev/null; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            echo "tts$((i + 1)) exited; its log:" >&2
            tail -n 30 "$LOG_DIR/tts$((i + 1)).log" >&2
            exit 1
        fi
        sleep 0.5
    done
done

IFS=, ; SERVER_LIST="${SERVERS[*]}"; unset IFS
"$PYTHON" "$ROOT/deploy/haproxy/render.py" --servers "$SERVER_LIST" --maxconn "$CAP" \
    --bind "$FRONT" --stats-bind "$STATS" --out "$LOG_DIR/haproxy.cfg"
"$HAPROXY" -c -q -f "$LOG_DIR/haproxy.cfg"
echo "HAProxy on http://$FRONT (stats: http://$STATS/), config $LOG_DIR/haproxy.cfg; Ctrl-C stops all" >&2
setsid "$HAPROXY" -db -f "$LOG_DIR/haproxy.cfg" &
PIDS+=($!)
# Exit (and clean up) as soon as any process ends on its own.
wait -n "${PIDS[@]}"
echo "a process exited on its own" >&2
exit 1
