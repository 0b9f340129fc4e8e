#!/usr/bin/env bash
# `buf breaking`: the protos in the work tree against the protos of a previous commit, so a renumbered,
# removed or retyped field (or a removed RPC, a renamed package, ...) fails the build.
#
#   BUF=path/to/buf scripts/buf_breaking.sh        (make breaking-proto)
#
# The reference is HEAD~1 (in CI, the commit before the one under test; locally it also covers
# uncommitted edits). BREAKING_AGAINST=<git ref> compares against the merge base of HEAD and that ref
# instead, for example BREAKING_AGAINST=origin/main on a branch. Passes, saying so, when the reference
# does not exist (first commit, shallow clone) or has no protos.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUF=${BUF:-.tools/bin/buf}

if [[ -n ${BREAKING_AGAINST:-} ]]; then
	if ! REF=$(git merge-base HEAD "$BREAKING_AGAINST" 2>/dev/null); then
		echo "breaking-proto: no merge base of HEAD and $BREAKING_AGAINST" >&2
		exit 1
	fi
	LABEL="the merge base of HEAD and $BREAKING_AGAINST"
else
	REF=HEAD~1
	LABEL="HEAD~1"
fi

if ! git rev-parse --verify --quiet "$REF^{commit}" >/dev/null; then
	echo "breaking-proto: there is no $LABEL (first commit or shallow clone); nothing to compare, passing"
	exit 0
fi
REF=$(git rev-parse "$REF^{commit}")
if ! git ls-tree -r --name-only "$REF" -- protos | grep -q '\.proto$'; then
	echo "breaking-proto: $LABEL has no protos/**/*.proto; nothing to compare, passing"
	exit 0
fi

AGAINST=$(mktemp -d)
trap 'rm -rf "$AGAINST"' EXIT
git archive "$REF" protos | tar -x -C "$AGAINST"
# The work tree's buf.yaml (module path protos, breaking rules) applies; the old tree is read as a plain
# directory of protos, so the comparison does not depend on the old commit having a buf.yaml.
"$BUF" breaking protos --against "$AGAINST/protos"
echo "breaking-proto: protos/ has no breaking change against $LABEL ($(git rev-parse --short "$REF"))"
