#!/usr/bin/env bash
# `buf breaking`: no version of the contract may break the one before it, so a renumbered, removed or
# retyped field (or a removed RPC, a renamed package, ...) fails the build.
#
#   BUF=path/to/buf scripts/buf_breaking.sh        (make breaking-proto)
#
# By default it checks every step of the contract's history: each commit reachable from HEAD that
# changed protos/ against its parent, and the work tree's protos/ (uncommitted edits) against HEAD's.
# Comparing only against HEAD~1 would miss a breaking change as soon as any later commit lands on top of
# it (CI tests only the tip of a submission of several commits); checking each step does not, and costs
# well under a second per contract change. A commit whose parent is missing (the first commit, a shallow
# clone) is skipped, saying so.
# BREAKING_AGAINST=<git ref> instead compares the work tree once against the merge base of HEAD and that
# ref, for example BREAKING_AGAINST=origin/main on a branch.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUF=${BUF:-.tools/bin/buf}
[[ $BUF == /* || $BUF != */* ]] || BUF=$ROOT/$BUF
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

has_protos() { git ls-tree -r --name-only "$1" -- protos | grep -q '\.proto$'; }

# Extracts the protos/ of commit $1 into directory $2 (as $2/protos).
extract() {
	mkdir -p "$2"
	git archive "$1" protos | tar -x -C "$2"
}

# check NEW_DIR OLD_DIR LABEL: buf breaking of NEW_DIR/protos against OLD_DIR/protos. The work tree's
# buf.yaml (module path protos, breaking rules) applies to every comparison; the old tree is read as a
# plain directory of protos, so a comparison does not depend on an old commit having a buf.yaml.
CHECKED=0
check() {
	local new=$1 old=$2 label=$3
	cp buf.yaml "$new/buf.yaml"
	if ! (cd "$new" && "$BUF" breaking protos --against "$old/protos"); then
		echo "breaking-proto: $label breaks the contract before it (see above)" >&2
		exit 1
	fi
	CHECKED=$((CHECKED + 1))
	echo "breaking-proto: $label: no breaking change"
}

if [[ -n ${BREAKING_AGAINST:-} ]]; then
	if ! REF=$(git merge-base HEAD "$BREAKING_AGAINST" 2>/dev/null); then
		echo "breaking-proto: no merge base of HEAD and $BREAKING_AGAINST" >&2
		exit 1
	fi
	if ! has_protos "$REF"; then
		echo "breaking-proto: the merge base of HEAD and $BREAKING_AGAINST has no protos/**/*.proto; nothing to compare, passing"
		exit 0
	fi
	extract "$REF" "$TMP/against"
	mkdir -p "$TMP/worktree" && cp -r protos "$TMP/worktree/"
	check "$TMP/worktree" "$TMP/against" "protos/ against the merge base of HEAD and $BREAKING_AGAINST ($(git rev-parse --short "$REF"))"
	exit 0
fi

if ! git rev-parse --verify --quiet "HEAD^{commit}" >/dev/null; then
	echo "breaking-proto: no commit yet; nothing to compare, passing"
	exit 0
fi

# Uncommitted edits: the work tree against HEAD.
if has_protos HEAD && ! git diff --quiet HEAD -- protos; then
	extract HEAD "$TMP/head"
	mkdir -p "$TMP/worktree" && cp -r protos "$TMP/worktree/"
	check "$TMP/worktree" "$TMP/head" "the uncommitted protos/ against HEAD ($(git rev-parse --short HEAD))"
fi

# Every committed step, newest first.
while IFS= read -r commit; do
	short=$(git rev-parse --short "$commit")
	subject=$(git log -1 --format=%s "$commit" | cut -c1-60)
	if ! git rev-parse --verify --quiet "$commit^1^{commit}" >/dev/null; then
		echo "breaking-proto: $short ($subject) has no parent here (first commit or shallow clone); skipped"
		continue
	fi
	if ! has_protos "$commit^1" || ! has_protos "$commit"; then
		echo "breaking-proto: $short ($subject) adds or removes every proto; nothing to compare, skipped"
		continue
	fi
	rm -rf "$TMP/new" "$TMP/old"
	extract "$commit" "$TMP/new"
	extract "$commit^1" "$TMP/old"
	check "$TMP/new" "$TMP/old" "$short ($subject) against its parent"
done < <(git rev-list --first-parent HEAD -- protos)

echo "breaking-proto: $CHECKED contract change(s) checked, none breaking"
