#!/usr/bin/env bash
# Every GPU figure in one prepared run (bench/gpu.py), on a bare GPU machine, without network.
#
# Here, once, before the machine is lent (README, "The GPU bench"):
#   bench/gpu.sh --prepare      # wheels the GPU machine lacks -> .whl/, Fashion-MNIST -> .data/
# There, from the carried checkout (carry: .whl and .data):
#   bash bench/gpu.sh           # installs the wheels into /tmp/site, runs bench/gpu.py into $OUT
#   bash bench/gpu.sh --dry-run # the same steps on the CPU with tiny sizes
# Fashion-MNIST comes from .data/fashion-mnist only (or --data DIR), never the system's copy,
# so a dry run here fails as the GPU machine would when the carried folder is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  # The GPU machine has torch, torchvision, numpy, jinja2, scikit-learn, matplotlib, rich and
  # pytest; the package also needs lark and black (and black's own needs). openai is imported
  # only by the LLM expert, which the bench does not use.
  exclude="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  grep -qx '/.data/' "$exclude" 2>/dev/null || echo '/.data/' >> "$exclude"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    lark black click mypy_extensions packaging pathspec platformdirs pytokens
  mkdir -p .data/fashion-mnist
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .data/fashion-mnist/
  du -sh .whl .data
  exit 0
fi

# The dry run uses this machine's environment; the GPU machine needs the carried wheels.
if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 bench/gpu.py --out "${OUT:-gpu-bench}" "$@"
