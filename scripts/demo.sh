#!/usr/bin/env bash
# One command on a fresh machine: set up, build the repository for the bundled
# all-MiniLM-L6-v2, start a local Triton, call it over HTTP and gRPC, print, stop.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
export HF_HUB_OFFLINE=1
TRITONIZE=.venv/bin/tritonize
REPO=${REPO:-model_repository}
HTTP_PORT=${HTTP_PORT:-8000} GRPC_PORT=${GRPC_PORT:-8001} METRICS_PORT=${METRICS_PORT:-8002}

$TRITONIZE build --task embedding --target local --name minilm --output "$REPO"
$TRITONIZE check "$REPO"

$TRITONIZE serve "$REPO" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" --log-file "$REPO/.triton.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || exit 1
    sleep 0.5
done

echo; echo "== HTTP =="
$TRITONIZE infer minilm "Triton serves transformers." "今天天气很好" --url "127.0.0.1:$HTTP_PORT"
echo; echo "== gRPC =="
$TRITONIZE infer minilm "Triton serves transformers." --protocol grpc --url "127.0.0.1:$GRPC_PORT"
echo; echo "== tokenizer metrics =="
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^tritonize_(input_tokens|truncated)' || true
