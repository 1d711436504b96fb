#!/usr/bin/env bash
# bench-serve.sh [--clients "1 2 4 8"] [--tokens N] [--runs N] [--no-qwen] -- `runner serve` under
# concurrent clients: aggregate tokens/s, time to first token, peak memory.
#
# Builds runner and prep (release, --locked). Two servers, each `runner serve DIR --parallel 8
# --ctx 1024 --temperature 0` on 127.0.0.1, one at a time:
#   - SmolLM2-135M-Instruct nf4, wholly resident (scripts/fetch-smollm2.sh; container written to
#     ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/serve-smollm2-nf4);
#   - Qwen2.5-Coder-1.5B-Instruct nf4 streamed with --max-memory 0 (every layer read from disk on
#     every pass; the container ${STRATA_MODELS:-$HOME/.cache/strata-models}/qwen2.5-coder-1.5b-
#     instruct.nf4 that bench-speculative.sh uses, written by scripts/fetch-qwen.sh 1.5b + prep if
#     absent). As root the page cache is dropped before the server starts.
# For each number of clients C (default 1 2 4 8), --runs times (default 1; medians when more): C
# threads each send one streamed POST /v1/completions at once (a distinct code prompt,
# max_tokens N (default 32), ignore_eos, temperature 0) and read it to the end. Per run: the
# aggregate tokens/s (all clients' generated tokens ÷ wall time from the first request to the last
# answer), the median and worst time to the first token, and at the end the server's peak resident
# memory (VmHWM). The last lines give, per model, aggregate tokens/s at C clients ÷ at 1.
# Logs under $STRATA_BENCH_DIR/serve-logs. Exit status: 0 done, 1 a failure, 2 usage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLIENTS="1 2 4 8"
TOKENS=32
RUNS=1
QWEN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS="${2:?--clients needs a list}"; shift 2 ;;
    --tokens) TOKENS="${2:?--tokens needs a number}"; shift 2 ;;
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --no-qwen) QWEN=0; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-serve.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in $CLIENTS "$TOKENS" "$RUNS"; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-serve.sh: client counts, --tokens and --runs take positive integers" >&2; exit 2 ;; esac
done
log() { echo "bench-serve.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

MODELS="${STRATA_MODELS:-$HOME/.cache/strata-models}"
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
LOGS="$BENCH_DIR/serve-logs"
mkdir -p "$MODELS" "$LOGS"

log "building runner and prep (release)"
cargo build --release --locked -p strata-runner --bin runner -p strata-prep --bin prep >&2
RUNNER=target/release/runner

SMOL="$BENCH_DIR/serve-smollm2-nf4"
if ! "$RUNNER" verify "$SMOL" >/dev/null 2>&1; then
  rm -rf "$SMOL"
  target/release/prep "$(scripts/fetch-smollm2.sh | tail -n 1)" --out "$SMOL" --quant nf4 --quiet
fi
QWEN_DIR="$MODELS/qwen2.5-coder-1.5b-instruct.nf4"
if [ "$QWEN" = 1 ] && ! "$RUNNER" verify "$QWEN_DIR" >/dev/null 2>&1; then
  rm -rf "$QWEN_DIR"
  target/release/prep "$(scripts/fetch-qwen.sh 1.5b | tail -n 1)" --out "$QWEN_DIR" --quant nf4 --quiet
fi

# bench NAME DIR [serve options...]: one server, every client count; prints result lines.
bench() {
  local name="$1" dir="$2"; shift 2
  local slog="$LOGS/$name.server.log"
  if [ "$(id -u)" = 0 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
  "$RUNNER" serve "$dir" --port 0 --parallel 8 --ctx 1024 --temperature 0 "$@" > "$slog" 2>&1 &
  local pid=$!
  local port=""
  for _ in $(seq 600); do
    port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$slog" | head -n 1)"
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || die "the $name server exited: $(tail -n 5 "$slog")"
    sleep 0.2
  done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || die "the $name server is not ready: $(tail -n 5 "$slog")"
  python3 - "$port" "$name" "$TOKENS" "$RUNS" $CLIENTS <<'EOF'
import http.client, json, statistics, sys, threading, time

port, name, tokens, runs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
clients = [int(c) for c in sys.argv[5:]]

def one(i, out):
    body = {"prompt": f"def function_{i}(values):\n    \"\"\"Sort the values and", "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first, n = None, 0
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        j = json.loads(line[6:])
        if j.get("usage"):
            n = j["usage"]["completion_tokens"]
        elif j["choices"] and j["choices"][0]["text"] and first is None:
            first = time.time() - t0
    out[i] = (first, n, time.time())
    c.close()

results = {}
for c in clients:
    rates, ttfts, worst = [], [], []
    for _ in range(runs):
        out = {}
        threads = [threading.Thread(target=one, args=(i, out)) for i in range(c)]
        t0 = time.time()
        for t in threads: t.start()
        for t in threads: t.join()
        end = max(v[2] for v in out.values())
        total = sum(v[1] for v in out.values())
        if total != c * tokens:
            sys.exit(f"{name}: {total} tokens generated, expected {c * tokens}")
        rates.append(total / (end - t0))
        firsts = [v[0] for v in out.values()]
        ttfts.append(statistics.median(firsts)); worst.append(max(firsts))
    results[c] = statistics.median(rates)
    print(f"{name} clients {c}: aggregate {statistics.median(rates):.2f} tokens/s, "
          f"first token median {statistics.median(ttfts):.2f}s worst {statistics.median(worst):.2f}s "
          f"(runs {runs}, {tokens} tokens each)", flush=True)
base = results[clients[0]]
print(f"{name}: aggregate tokens/s vs {clients[0]} client(s): " +
      ", ".join(f"{c}: {results[c] / base:.2f}x" for c in clients), flush=True)
EOF
  echo "$name peak memory (VmHWM): $(awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$pid/status")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; kernels ${STRATA_KERNELS:-best}"
bench smollm2-resident "$SMOL"
if [ "$QWEN" = 1 ]; then
  bench qwen1.5b-streamed "$QWEN_DIR" --max-memory 0
fi
