#!/usr/bin/env bash
# Builds the modelwire-client wheel (client_stub/python: the generated modelwire.v1 stubs and the
# modelwire.client library) into a directory and prints its path (`make client-wheel`).
#
#   scripts/build_client_wheel.sh PYTHON OUT_DIR
#
# It builds from a copy of the sources without build/, *.egg-info or __pycache__, so nothing an
# editable install or an earlier build left in client_stub/python can get into the wheel, and the
# checkout stays untouched. setuptools comes from pip's build isolation (PyPI, or pip's cache).
set -euo pipefail
python=$1
out=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$root/client_stub/python" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
	-cf - . | tar -C "$src" -xf -
mkdir -p "$out"
rm -f "$out"/modelwire_client-*.whl
"$python" -m pip wheel --no-deps --quiet --wheel-dir "$out" "$src"
ls "$out"/modelwire_client-*.whl
