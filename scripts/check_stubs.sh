#!/usr/bin/env bash
# Fails when the committed stubs are not what `make stubs` generates from protos/ now.
# Regenerates every language into a temporary tree with scripts/gen_stubs.sh (same plugins, same
# flags) and compares the generated files only: Python *_pb2.py, *_pb2.pyi, *_pb2_grpc.py under
# client_stub/python, Go *.pb.go under client_stub/go, everything under client_stub/java/src/main/java.
# A missing, extra or different file fails, with a diff.
#
#   <plugin variables> scripts/check_stubs.sh        (make check-stubs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$ROOT/scripts/gen_stubs.sh" "$TMP/generated" >/dev/null

# Copies the generated files of the tree at $1 into $2, keeping their relative paths.
collect() {
	local from=$1 to=$2
	mkdir -p "$to"
	(
		cd "$from"
		{
			[[ -d client_stub/python ]] && find client_stub/python -type f \
				\( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \)
			[[ -d client_stub/go ]] && find client_stub/go -type f -name '*.pb.go'
			[[ -d client_stub/java/src/main/java ]] && find client_stub/java/src/main/java -type f
		} | LC_ALL=C sort | while IFS= read -r file; do
			mkdir -p "$to/$(dirname "$file")"
			cp "$file" "$to/$file"
		done
	)
}

collect "$ROOT" "$TMP/committed"
collect "$TMP/generated" "$TMP/regenerated"

if ! (cd "$TMP" && diff -ru committed regenerated) >"$TMP/stubs.diff"; then
	echo "check-stubs: the committed stubs differ from what protos/ generates; run 'make stubs' and commit:" >&2
	head -n 200 "$TMP/stubs.diff" >&2
	lines=$(wc -l <"$TMP/stubs.diff")
	if ((lines > 200)); then
		echo "... ($lines diff lines in all)" >&2
	fi
	exit 1
fi
count=$(find "$TMP/committed" -type f | wc -l)
echo "check-stubs: $count generated Python, Go and Java files are up to date with protos/"
