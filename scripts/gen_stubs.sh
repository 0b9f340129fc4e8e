#!/usr/bin/env bash
# Regenerates the committed Python and Go stubs from every protos/**/*.proto with the protoc that
# grpcio-tools ships (`python -m grpc_tools.protoc`), into OUT_ROOT (default: the repository).
# The Java stubs are not committed: client_stub/java/pom.xml generates them in every Maven build.
#
#   scripts/gen_stubs.sh [OUT_ROOT]
#
# Outputs, relative to OUT_ROOT:
#   client_stub/python/...            *_pb2.py, *_pb2.pyi, *_pb2_grpc.py (grpcio-tools' own plugins)
#   client_stub/go/<go_package dir>/  *.pb.go, *_grpc.pb.go (protoc-gen-go, protoc-gen-go-grpc)
# Previously generated files in OUT_ROOT are removed first, so a deleted proto leaves nothing behind.
# The plugin paths come from mk/stubs.mk (pinned versions); run it through `make stubs`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT}" && cd "${1:-$ROOT}" && pwd)
PY=${PY:-.venv/bin/python}
[[ $PY == /* ]] || PY=$ROOT/$PY
: "${PROTOC_GEN_GO:?set PROTOC_GEN_GO (run through make stubs)}"
: "${PROTOC_GEN_GO_GRPC:?set PROTOC_GEN_GO_GRPC (run through make stubs)}"
GO_MODULE=github.com/modelwire/modelwire/client_stub/go

cd "$ROOT"
mapfile -t PROTOS < <(find protos -name '*.proto' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
	echo "gen_stubs: no .proto files under protos/" >&2
	exit 1
fi

PY_OUT=$OUT/client_stub/python
GO_OUT=$OUT/client_stub/go

# Remove what a previous run generated (and only that: hand-written files stay).
if [[ -d $PY_OUT ]]; then
	find "$PY_OUT" -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -delete
fi
if [[ -d $GO_OUT ]]; then
	find "$GO_OUT" -type f -name '*.pb.go' -delete
fi
mkdir -p "$PY_OUT" "$GO_OUT"

protoc() { "$PY" -m grpc_tools.protoc -Iprotos "$@"; }

protoc --python_out="$PY_OUT" --pyi_out="$PY_OUT" --grpc_python_out="$PY_OUT" "${PROTOS[@]}"

protoc \
	--plugin=protoc-gen-go="$PROTOC_GEN_GO" \
	--plugin=protoc-gen-go-grpc="$PROTOC_GEN_GO_GRPC" \
	--go_out="$GO_OUT" --go_opt=module="$GO_MODULE" \
	--go-grpc_out="$GO_OUT" --go-grpc_opt=module="$GO_MODULE" \
	"${PROTOS[@]}"

echo "gen_stubs: generated Python and Go stubs for ${#PROTOS[@]} proto file(s) into $OUT/client_stub"
