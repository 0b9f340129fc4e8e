"""`make test` gets the tools the suite needs itself, and a test never skips for a missing one: a
fresh machine used to skip the etcd registry tests silently (only .ci/run installed etcd)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import etcd_server
from etcd_server import EtcdServer

ROOT = Path(__file__).resolve().parent.parent
SKIPS = {"pytest.skip", "pytest.mark.skip", "pytest.mark.skipif", "pytest.importorskip"}


def test_no_test_skips_itself() -> None:
    """A missing tool or package fails the test naming the install step; it is never a skip."""
    skipping = [
        f"{path.name}:{node.lineno}"
        for path in sorted(Path(__file__).parent.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and ast.unparse(node) in SKIPS
    ]
    assert skipping == []


def test_make_pytest_builds_etcd_and_hands_it_and_redis_to_the_tests() -> None:
    """`-W` makes the etcd module look edited: make rebuilds etcd into .tools/ before the tests,
    and names it and redis-server (Debian's, which mk/redis.mk installs when missing) to them.
    Run from `make test` too: a make inside a make prints its "Entering/Leaving directory" lines
    unless told not to."""
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "mk/etcd/main.go", "pytest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    etcd = ROOT / ".tools" / "etcd" / "etcd"
    build = dry_run.index(f"cd mk/etcd && go build -o {etcd} .")
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    assert dry_run[build + 1 :] == [
        f"MODELWIRE_ETCD={etcd} MODELWIRE_REDIS={redis} .venv/bin/python -m pytest"
    ]


def test_the_etcd_tests_fail_naming_the_step_when_etcd_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELWIRE_ETCD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(etcd_server, "BUILT_ETCD", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as missing:
        EtcdServer()
    assert str(missing.value) == (
        "etcd not found: `make etcd` builds it into .tools/etcd/ (`make test` does that first), "
        "or install one on PATH (Debian: apt-get install etcd-server)"
    )


def test_the_etcd_tests_take_the_etcd_make_names_then_the_built_one_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "etcd"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    built = tmp_path / "built-etcd"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MODELWIRE_ETCD", raising=False)
    monkeypatch.setattr(etcd_server, "BUILT_ETCD", built)
    assert etcd_server.etcd_binary() == str(on_path)
    built.touch()
    assert etcd_server.etcd_binary() == str(built)
    monkeypatch.setenv("MODELWIRE_ETCD", "/named/by/make/etcd")
    assert etcd_server.etcd_binary() == "/named/by/make/etcd"
