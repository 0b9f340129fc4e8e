#!/usr/bin/env bash
# Regenerates the Python, Go and Java stubs from every protos/**/*.proto with the one protoc that
# grpcio-tools ships (`python -m grpc_tools.protoc`), into OUT_ROOT (default: the repository).
#
#   scripts/gen_stubs.sh [OUT_ROOT]
#
# Outputs, relative to OUT_ROOT:
#   client_stub/python/...            *_pb2.py, *_pb2.pyi, *_pb2_grpc.py (grpcio-tools' own plugins)
#   client_stub/go/<go_package dir>/  *.pb.go, *_grpc.pb.go (protoc-gen-go, protoc-gen-go-grpc)
#   client_stub/java/src/main/java/   protoc's --java_out plus protoc-gen-grpc-java
# Previously generated files in OUT_ROOT are removed first, so a deleted proto leaves nothing behind.
# The plugin paths come from mk/stubs.mk (pinned versions); run it through `make stubs`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT}" && cd "${1:-$ROOT}" && pwd)
PY=${PY:-.venv/bin/python}
[[ $PY == /* ]] || PY=$ROOT/$PY
: "${PROTOC_GEN_GO:?set PROTOC_GEN_GO (run through make stubs)}"
: "${PROTOC_GEN_GO_GRPC:?set PROTOC_GEN_GO_GRPC (run through make stubs)}"
: "${PROTOC_GEN_GRPC_JAVA:?set PROTOC_GEN_GRPC_JAVA (run through make stubs)}"
: "${PROTOC_JAVA:?set PROTOC_JAVA (run through make stubs)}"
GO_MODULE=github.com/modelwire/modelwire/client_stub/go

cd "$ROOT"
mapfile -t PROTOS < <(find protos -name '*.proto' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
	echo "gen_stubs: no .proto files under protos/" >&2
	exit 1
fi

PY_OUT=$OUT/client_stub/python
GO_OUT=$OUT/client_stub/go
JAVA_OUT=$OUT/client_stub/java/src/main/java

# Remove what a previous run generated (and only that: hand-written files stay).
if [[ -d $PY_OUT ]]; then
	find "$PY_OUT" -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -delete
fi
if [[ -d $GO_OUT ]]; then
	find "$GO_OUT" -type f -name '*.pb.go' -delete
fi
rm -rf "$JAVA_OUT"
mkdir -p "$PY_OUT" "$GO_OUT" "$JAVA_OUT"

protoc() { "$PY" -m grpc_tools.protoc -Iprotos "$@"; }

# grpc_tools.protoc has no built-in Java generator: scripts/protoc_gen_java.py is its protoc-gen-java and
# hands the parsed descriptors to the Java generator of the protoc release of the same version.
want=$("$PY" -m grpc_tools.protoc --version)
have=$("$PROTOC_JAVA" --version)
if [[ $want != "$have" ]]; then
	echo "gen_stubs: grpc_tools.protoc is '$want' but the Java generator's protoc is '$have';" \
		"set PROTOC_JAVA_VERSION in mk/stubs.mk to match grpcio-tools" >&2
	exit 1
fi
PLUGIN_DIR=$(mktemp -d)
trap 'rm -rf "$PLUGIN_DIR"' EXIT
printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PY" "$ROOT/scripts/protoc_gen_java.py" >"$PLUGIN_DIR/protoc-gen-java"
chmod +x "$PLUGIN_DIR/protoc-gen-java"
export MODELWIRE_PROTOC_JAVA=$PROTOC_JAVA

protoc --python_out="$PY_OUT" --pyi_out="$PY_OUT" --grpc_python_out="$PY_OUT" "${PROTOS[@]}"

protoc \
	--plugin=protoc-gen-go="$PROTOC_GEN_GO" \
	--plugin=protoc-gen-go-grpc="$PROTOC_GEN_GO_GRPC" \
	--go_out="$GO_OUT" --go_opt=module="$GO_MODULE" \
	--go-grpc_out="$GO_OUT" --go-grpc_opt=module="$GO_MODULE" \
	"${PROTOS[@]}"

protoc \
	--plugin=protoc-gen-java="$PLUGIN_DIR/protoc-gen-java" \
	--plugin=protoc-gen-grpc-java="$PROTOC_GEN_GRPC_JAVA" \
	--java_out="$JAVA_OUT" --grpc-java_out="$JAVA_OUT" \
	"${PROTOS[@]}"

echo "gen_stubs: generated Python, Go and Java stubs for ${#PROTOS[@]} proto file(s) into $OUT/client_stub"
