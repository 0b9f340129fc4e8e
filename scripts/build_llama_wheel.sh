#!/usr/bin/env bash
# Builds llama-cpp-python once per build configuration and installs it into the given Python.
#
# The build is portable on purpose: GGML_NATIVE=OFF with an explicit x86 baseline (AVX2, FMA, F16C,
# BMI2; no AVX-512, no AMX). A `-march=native` wheel built on one machine dies of SIGILL on a CPU
# without its instructions, and one built on Sapphire Rapids carries the AMX kernels that segfault
# on the embedded Q4_K_M model (llama.cpp #20824); pip caches a wheel and reuses it whatever
# CMAKE_ARGS say later. So pip's cache is bypassed, and the wheel is kept in a directory named after
# the version, the CMake arguments and the compiler: another configuration never finds it.
# docs/architecture.md ("The llama.cpp build") has the measurements behind the choice.
#
#   scripts/build_llama_wheel.sh PYTHON [--rebuild]
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1
rebuild=${2:-}

version=$(sed -n 's/.*"llama-cpp-python\[server\]==\([^"]*\)".*/\1/p' pyproject.toml)
[ -n "$version" ] || { echo "build_llama_wheel: no llama-cpp-python pin in pyproject.toml" >&2; exit 1; }
cmake_args="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
cmake_args+=" -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
key=$(printf '%s\n' "$version" "$cmake_args" "$(cc --version | head -n 1)" | sha256sum | cut -c1-16)
house="${MODELWIRE_WHEELHOUSE:-$HOME/.cache/modelwire/wheels}/llama-cpp-python-$version-$key"

# One build at a time per wheelhouse: two installs at once would delete each other's build
# directory. The second waits here, then finds the first one's wheel.
mkdir -p "$(dirname "$house")"
exec 9>"$house.lock"
if ! flock -n 9; then
	echo "build_llama_wheel: another install is building llama-cpp-python into $house; waiting for it"
	flock 9
fi

if [ -n "$rebuild" ] || ! ls "$house"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
	echo "building llama-cpp-python $version (portable x86 baseline; about 6 minutes on 2 cores) into $house"
	rm -rf "$house" "$house.partial"
	mkdir -p "$house.partial"
	log="$house.partial/build.log"
	echo "build log: $log (kept as $house/build.log)"
	# The build is a process group of its own (pip, CMake, the compilers), stopped whole when the
	# install stops: a background job ignores Ctrl-C, and killing pip alone leaves its compilers
	# running. The signal traps make Ctrl-C end the progress loop below (its `timeout` would
	# otherwise take the signal and the loop go on).
	CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
		setsid "$python" -m pip wheel -v --no-cache-dir --no-deps --no-binary llama-cpp-python \
		-w "$house.partial" "llama-cpp-python==$version" >"$log" 2>&1 </dev/null &
	build=$!
	trap 'kill -TERM -- "-$build" 2>/dev/null || true' EXIT
	trap 'echo "build_llama_wheel: interrupted; the build stopped" >&2; exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
	# A line every MODELWIRE_BUILD_PROGRESS_S seconds with the log's latest line (CMake's
	# "[ 42%] Building ..."), so a long build is not mistaken for a hung one.
	started=$SECONDS
	while ! timeout "${MODELWIRE_BUILD_PROGRESS_S:-30}" tail --pid="$build" -f /dev/null; do
		echo "  still building ($((SECONDS - started)) s): $(tail -n 1 "$log" | cut -c1-100)"
	done
	wait "$build" || { tail -n 40 "$log" >&2; exit 1; }
	trap - EXIT INT TERM HUP
	mv "$house.partial" "$house"  # only a finished build is ever found
fi
"$python" -m pip install --no-deps --force-reinstall --no-cache-dir "$house"/llama_cpp_python-"$version"-*.whl
