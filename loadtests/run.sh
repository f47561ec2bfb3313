#!/usr/bin/env bash
# Run the locust load test headless against a running tts_server, then check pass/fail thresholds.
#
#   loadtests/run.sh --host http://127.0.0.1:8000 [--out DIR] [--users N] [--spawn-rate R]
#                    [--run-time 30s] [--shape step|arrival] [--user StreamingUser|OpenLoopUser]
#                    [-- extra locust arguments]
#
# Writes DIR/run_stats.csv (and the other locust CSVs), DIR/report.html, DIR/run.json (locust's
# final stats, which the checks read: the CSV can miss the last events of streams that end during
# the stop) and DIR/thresholds.txt. Exits 0 when every threshold holds, 1 when one fails, 2 on
# usage errors or when locust itself crashed.
#
# Thresholds (checked after the run):
#   - no 5xx (and no other error status) from /generate;
#   - no broken stream (a transfer error or no audio after a 200);
#   - 503 only when the connection cap is exceeded (REJECT unexpected-503 = 0);
#   - every admitted stream completes or is cancelled (admitted = complete + cancelled);
#   - p95 time to first audio byte <= TTFB_P95_MS (env, default 2000);
#   - at least MIN_STREAMS (env, default 1) streams completed.
# With --user SessionUser (voice-agent sessions on /v1/tts/stream) instead:
#   - no failed session (fatal error event, abnormal close, no audio) and no refused upgrade but 503;
#   - p95 time from the first text fragment to first audio <= SESSION_TTFA_P95_MS (default 2000);
#   - p95 barge-in (clear sent -> cleared received) <= BARGE_IN_P95_MS (default 500);
#   - at least MIN_SESSIONS (env, default 1) sessions completed.
# Load mix knobs: the LOAD_* and shape variables documented in locustfile.py and shapes.py.
# LOCUST (default "locust") and PYTHON (default python3) name the commands to run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
host="" out="" users=4 spawn_rate=4 run_time=30s shape="" user_class=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --users|-u) users="$2"; shift 2 ;;
    --spawn-rate|-r) spawn_rate="$2"; shift 2 ;;
    --run-time|-t) run_time="$2"; shift 2 ;;
    --shape) shape="$2"; shift 2 ;;
    --user) user_class="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$host" ]] || { echo "run.sh: --host URL is required" >&2; exit 2; }
out="${out:-$here/out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"

args=(-f "$here/locustfile.py" --headless --host "$host" --csv "$out/run" --html "$out/report.html"
      --json-file "$out/run" --stop-timeout "${STOP_TIMEOUT:-30}" --only-summary --loglevel "${LOCUST_LOGLEVEL:-INFO}")
case "$shape" in
  "") args+=(-u "$users" -r "$spawn_rate" -t "$run_time" "${user_class:-StreamingUser}") ;;
  step|arrival) export LOAD_SHAPE="$shape" ;;
  *) echo "run.sh: --shape must be step or arrival" >&2; exit 2 ;;
esac

read -ra locust_cmd <<< "${LOCUST:-locust}"
echo "run.sh: ${locust_cmd[*]} ${args[*]} $*" >&2
set +e
"${locust_cmd[@]}" "${args[@]}" "$@"
rc=$?
set -e
# locust exits 1 when any request failed (the checks below say which); anything else is a crash.
if [[ $rc -ne 0 && $rc -ne 1 ]]; then
  echo "run.sh: locust exited $rc" >&2
  exit 2
fi

TTFB_P95_MS="${TTFB_P95_MS:-2000}" MIN_STREAMS="${MIN_STREAMS:-1}" SESSION_TTFA_P95_MS="${SESSION_TTFA_P95_MS:-2000}" \
BARGE_IN_P95_MS="${BARGE_IN_P95_MS:-500}" MIN_SESSIONS="${MIN_SESSIONS:-1}" "${PYTHON:-python3}" - "$out" <<'PY'
"""Check the thresholds on locust's final stats (run.json) and write thresholds.txt."""

import json
import os
import sys
from pathlib import Path

out = Path(sys.argv[1])
entries = json.loads((out / "run.json").read_text())


def rows(method: str, prefix: str = "") -> list[dict]:
    return [e for e in entries if e["method"] == method and e["name"].startswith(prefix)]


def count(method: str, prefix: str = "", field: str = "num_requests") -> int:
    return sum(e[field] for e in rows(method, prefix))


def p95(entry_rows: list[dict]) -> float | None:
    times: dict[float, int] = {}
    for e in entry_rows:
        for ms, n in e["response_times"].items():
            times[float(ms)] = times.get(float(ms), 0) + n
    total = sum(times.values())
    if not total:
        return None
    seen = 0
    for ms in sorted(times):
        seen += times[ms]
        if seen >= 0.95 * total:
            return ms
    return max(times)


limit = float(os.environ["TTFB_P95_MS"])
min_streams = int(os.environ["MIN_STREAMS"])
headers_ok = count("POST", "generate") - count("POST", "generate", "num_failures")
rejected = count("REJECT") - count("REJECT", "session-")
admitted = headers_ok - rejected
complete = count("STREAM", "complete") - count("STREAM", "complete", "num_failures")
cancelled = count("STREAM", "cancelled")
errors_5xx = count("ERROR", "http-5")
errors_other = count("ERROR") - errors_5xx
broken = count("STREAM", "complete", "num_failures") + count("STREAM", "cancelled", "num_failures")
unexpected_503 = count("REJECT", "unexpected-503")
ttfb_p95 = p95(rows("STREAM", "ttfb"))
stream_checks = [
    ("no 5xx", errors_5xx == 0, f"{errors_5xx} responses 5xx other than 503"),
    ("no other error status", errors_other == 0, f"{errors_other} error statuses (4xx or transport)"),
    ("no broken stream", broken == 0, f"{broken} broken streams"),
    ("503 only past the cap", unexpected_503 == 0, f"{unexpected_503} of {rejected} rejections below the cap"),
    (
        "every admitted stream completes or is cancelled",
        admitted == complete + cancelled,
        f"admitted {admitted}, complete {complete}, cancelled {cancelled}",
    ),
    ("p95 TTFB", ttfb_p95 is not None and ttfb_p95 <= limit, f"p95 TTFB {ttfb_p95} ms (limit {limit:g} ms)"),
    ("streams ran", complete >= min_streams, f"{complete} complete streams (minimum {min_streams})"),
    ("cancels answered", count("POST", "cancel", "num_failures") == 0, f"{count('POST', 'cancel')} cancels"),
]
sessions_ok = count("SESSION", "complete") - count("SESSION", "complete", "num_failures")
session_ttfa = p95(rows("SESSION", "ttfa"))
barge_in = p95(rows("SESSION", "barge-in"))
session_limit, barge_limit = float(os.environ["SESSION_TTFA_P95_MS"]), float(os.environ["BARGE_IN_P95_MS"])
session_checks = [
    ("no failed session", count("SESSION", "", "num_failures") == 0, f"{count('SESSION', 'complete', 'num_failures')} failed"),
    ("upgrades refused only with 503", count("ERROR", "ws-") == 0, f"{count('ERROR', 'ws-')} other refusals"),
    (
        "p95 session first audio",
        session_ttfa is not None and session_ttfa <= session_limit,
        f"p95 {session_ttfa} ms (limit {session_limit:g} ms)",
    ),
    (
        "p95 barge-in",
        barge_in is None or barge_in <= barge_limit,
        f"p95 clear -> cleared {barge_in} ms (limit {barge_limit:g} ms; {count('SESSION', 'barge-in')} barge-ins)",
    ),
    ("sessions ran", sessions_ok >= int(os.environ["MIN_SESSIONS"]), f"{sessions_ok} sessions completed"),
]
checks = (stream_checks if rows("POST", "generate") or not rows("SESSION") else []) + (
    session_checks if rows("SESSION") else []
)
lines = [f"{'PASS' if ok else 'FAIL'}  {name}: {detail}" for name, ok, detail in checks]
lines.append(f"rejections (503 past the cap): {rejected - unexpected_503} streams, {count('REJECT', 'session-')} sessions")
report = "\n".join(lines) + "\n"
(out / "thresholds.txt").write_text(report)
print(report, end="")
sys.exit(0 if all(ok for _, ok, _ in checks) else 1)
PY
