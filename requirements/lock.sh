#!/usr/bin/env bash
# Refreshes the locks to the newest releases pyproject.toml allows, with the sha256 of every file:
#   requirements/lock.txt    the server and the test tools (extra `dev`): what CI and the README's
#                            test command install
#   requirements/server.txt  the server alone (extra `server`): the README's quick start, the Dockerfile
#   requirements/client.txt  the light client (`pip install sparse-nas`)
# The last two are subsets of the first, with the same versions. All are resolved for CPython 3.11
# on Linux x86_64 (manylinux_2_28), where CI runs. torch is the CPU wheel (requirements/torch-cpu.txt),
# found in pip's find-links folder when the machine has one ($PIP_FIND_LINKS), else on PyTorch's
# CPU wheel index. Needs uv (`pip install uv`).
set -euo pipefail
cd "$(dirname "$0")/.."
compile=(uv pip compile --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
    --find-links "${PIP_FIND_LINKS:-https://download.pytorch.org/whl/cpu/torch/}"
    --custom-compile-command requirements/lock.sh)
"${compile[@]}" pyproject.toml --extra dev -c requirements/torch-cpu.txt -o requirements/lock.txt
"${compile[@]}" pyproject.toml --extra server -c requirements/lock.txt -o requirements/server.txt
"${compile[@]}" pyproject.toml -c requirements/lock.txt -o requirements/client.txt
