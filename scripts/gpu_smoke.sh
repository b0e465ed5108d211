#!/usr/bin/env bash
# GPU smoke test: P/D on one GPU with a random-weight model, one chat request through the openai SDK.
# Needs `scripts/install.sh gpu` (vLLM + nixl + Ray) on a machine with an NVIDIA GPU, and a tokenizer folder
# (default: the built-in model's, provisioned by `python -m serving.model` on any machine, then copied).
#   scripts/gpu_smoke.sh [TOKENIZER_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TOKENIZER=${1:-${PDSERVE_CACHE:-$HOME/.cache/pdserve}/models/smollm2-135m-instruct}
MODEL_DIR=$(mktemp -d /tmp/pdserve-random-XXXX)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" scripts/random_model.py --out "$MODEL_DIR" --tokenizer "$TOKENIZER"
"$PY" -m serving.cli up --config configs/gpu-smoke.yaml --model "$MODEL_DIR" --port 8123 --metrics-port 8124 \
    > /tmp/pdserve-gpu-smoke.log 2>&1 &
UP=$!
trap 'kill -INT $UP; wait $UP || true' EXIT
for _ in $(seq 1 180); do
    grep -q "pdserve: ready" /tmp/pdserve-gpu-smoke.log && break
    kill -0 $UP 2>/dev/null || { tail -50 /tmp/pdserve-gpu-smoke.log; exit 1; }
    sleep 2
done
"$PY" - <<'PYEOF'
import time, httpx
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:8123/v1", api_key="unused")
start = time.perf_counter()
reply = client.chat.completions.create(model="pdserve-smoke", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=32, extra_body={"ignore_eos": True})
print(f"chat: {reply.usage.completion_tokens} tokens in {time.perf_counter() - start:.3f}s")
assert reply.usage.completion_tokens == 32
stats = httpx.get("http://127.0.0.1:8123/pdserve/stats").json()
print("decode imported", stats["decode"]["prompt_tokens_external"], "prompt tokens over NIXL;",
      stats["decode"]["kv_transfers"], "transfers")
assert stats["decode"]["prompt_tokens_computed"] == 0 and stats["decode"]["kv_transfers"] >= 1
print("GPU smoke: OK")
PYEOF
