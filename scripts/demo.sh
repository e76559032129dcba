#!/usr/bin/env bash
# One command on a fresh machine: set up, build the repository for the bundled
# all-MiniLM-L6-v2, start a local Triton (and a Prometheus scraping it), call it over HTTP and
# gRPC, verify the deployment, run a short load test with its report, stop.
#
# Environment (defaults in brackets), e.g. to run it beside another server:
#   REPO             model repository to build into [model_repository]
#   HTTP_PORT, GRPC_PORT, METRICS_PORT   Triton's ports [8000, 8001, 8002]
#   PROMETHEUS_PORT  the local Prometheus [9090]
#   USERS, DURATION  the load test's users and length [8, 20s]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
export HF_HUB_OFFLINE=1
TRITONIZE=.venv/bin/tritonize
REPO=${REPO:-model_repository}
HTTP_PORT=${HTTP_PORT:-8000} GRPC_PORT=${GRPC_PORT:-8001} METRICS_PORT=${METRICS_PORT:-8002}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
USERS=${USERS:-8} DURATION=${DURATION:-20s}

$TRITONIZE build --task embedding --target local --name minilm --output "$REPO" --overwrite
$TRITONIZE check "$REPO"
mkdir -p reports

$TRITONIZE serve "$REPO" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
    --metrics-port "$METRICS_PORT" --log-file reports/tritonserver.log \
    --prometheus --prometheus-port "$PROMETHEUS_PORT" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do  # Triton ready, and Prometheus scraping it
    curl -sf "http://127.0.0.1:$HTTP_PORT/v2/health/ready" >/dev/null \
        && curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null && break
    kill -0 $SERVER 2>/dev/null || exit 1
    sleep 0.5
done

echo; echo "== HTTP =="
$TRITONIZE infer minilm "Triton serves transformers." "今天天气很好" --url "127.0.0.1:$HTTP_PORT"
echo; echo "== gRPC =="
$TRITONIZE infer minilm "Triton serves transformers." --protocol grpc --url "127.0.0.1:$GRPC_PORT"
echo; echo "== deployment gate =="
$TRITONIZE verify --model minilm --golden "$REPO/minilm/golden.json" --url "127.0.0.1:$HTTP_PORT" \
    --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics"
echo; echo "== load test (steady, $USERS users, $DURATION) =="
$TRITONIZE loadtest minilm --url "127.0.0.1:$GRPC_PORT" --protocol grpc --scenario steady \
    --users "$USERS" --duration "$DURATION" --slo loadtests/slo.yaml \
    --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" --out reports/demo
echo; echo "== from Prometheus (http://127.0.0.1:$PROMETHEUS_PORT): successes in the last 5 minutes, calls and verify included =="
curl -s "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query" \
    --data-urlencode 'query=sum by (model) (increase(nv_inference_request_success[5m]))'
echo; echo "report: reports/demo/summary.md (plots beside it)"
