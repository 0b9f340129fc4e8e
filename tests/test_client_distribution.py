"""The modelwire-client distribution (client_stub/python/pyproject.toml, built by
`make client-wheel`): its wheel holds the generated stubs and the client with their type information
and nothing of the server; installed into a fresh venv with its own three dependencies only, it
calls a running worker; and installed beside the server's wheel, every file of the `modelwire`
import package has one owner (docs/architecture.md, "Distributions")."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import AsyncIterator
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

from conftest import running_worker
from fake_upstream import load_toml_config
from modelwire.app.server import Worker

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SOURCES = ROOT / "client_stub" / "python"
# The first run fills pip's cache from PyPI (grpcio is a few MB); later runs take it from the cache.
PIP_TIMEOUT_S = 300
DEPENDENCIES = {"grpcio", "grpcio-status", "protobuf"}

CONFIG = """
[server]
grace_period_s = 1.0

[[models]]
name = "echo"
provider = "echo"
chunks = 3
chunk_text = "hello "
"""

# Run by the fresh venv's python with the worker's address: Generate, ListModels, a refusal whose
# google.rpc details the client decodes, and what the venv holds besides.
CLIENT_SCRIPT = """
import importlib.util, json, sys
from importlib import metadata

import modelwire
from modelwire.client import ModelWorkerSyncClient, ModelwireCallError

with ModelWorkerSyncClient(sys.argv[1], timeout=30) as client:
    output = client.generate("echo", "Say hello.")
    models = [model.model for model in client.list_models()]
    try:
        client.generate("echo", "Say hello.", temperature=5)
        refusal = None
    except ModelwireCallError as error:
        refusal = [error.code.name, sorted(error.field_violations)]
print(json.dumps({
    "text": output.text,
    "finish_reason": output.finish_reason,
    "models": models,
    "refusal": refusal,
    "modelwire_file": modelwire.__file__,
    "server": importlib.util.find_spec("modelwire.app") is not None,
    "distributions": sorted(dist.metadata["Name"] for dist in metadata.distributions()),
}))
"""


def run(command: list[str], timeout: float = PIP_TIMEOUT_S, cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wheel_files(wheel: Path) -> tuple[set[str], Message]:
    """The wheel's files outside its .dist-info, and its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    return {name for name in names if ".dist-info/" not in name}, metadata


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a requirement such as `grpcio>=1.85.1`."""
    return re.sub(r"[-_.]+", "-", re.split(r"[ <>=!~;\[]", requirement, maxsplit=1)[0]).lower()


def requirement_names(metadata: Message) -> set[str]:
    return {requirement_name(requirement) for requirement in metadata.get_all("Requires-Dist", [])}


def server_only_requirements() -> set[str]:
    """The server distribution and what it requires that the client does not (aiohttp, …)."""
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {requirement_name(requirement) for requirement in server["dependencies"]}
    return ({"modelwire"} | names) - {"modelwire-client"} - DEPENDENCIES


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as `make client-wheel` builds it."""
    out = tmp_path_factory.mktemp("client-wheel")
    run(["make", "-s", "client-wheel", f"CLIENT_WHEEL_DIR={out}", f"PY={sys.executable}"], cwd=ROOT)
    (wheel,) = out.glob("modelwire_client-*.whl")
    return wheel


@pytest.fixture(scope="module")
def client_venv(client_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the client wheel and what pip resolves for it.
    This venv's pip installs into it (--python), so it holds nothing else, not even pip."""
    venv = tmp_path_factory.mktemp("client-venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    python = venv / "bin" / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(client_wheel),
        ]
    )
    return python


@pytest.fixture(scope="module")
async def echo_worker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worker]:
    async with running_worker(load_toml_config(tmp_path_factory.mktemp("echo"), CONFIG)) as worker:
        yield worker


def test_the_client_wheel_holds_the_stubs_and_the_client_with_their_types_and_nothing_else(
    client_wheel: Path,
) -> None:
    files, metadata = wheel_files(client_wheel)
    sources = {
        path.relative_to(CLIENT_SOURCES).as_posix()
        for path in (CLIENT_SOURCES / "modelwire").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert files == sources
    assert {"modelwire/client/py.typed", "modelwire/v1/py.typed"} <= files
    assert {"modelwire/v1/worker_pb2.pyi", "modelwire/v1/controller_pb2.pyi"} <= files
    # A namespace portion: the server distribution owns modelwire/__init__.py.
    assert "modelwire/__init__.py" not in files
    assert metadata["Name"] == "modelwire-client"
    assert requirement_names(metadata) == DEPENDENCIES


def test_the_server_requires_the_client_of_its_own_version() -> None:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((CLIENT_SOURCES / "pyproject.toml").read_text())["project"]
    assert client["version"] == server["version"]
    assert f"modelwire-client=={client['version']}" in server["dependencies"]


async def test_a_fresh_venv_with_the_client_wheel_alone_calls_a_worker(
    client_venv: Path, echo_worker: Worker
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(client_venv),
        "-c",
        CLIENT_SCRIPT,
        echo_worker.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["text"] == "hello " * 3
    assert result["finish_reason"] == 1  # FINISH_REASON_STOP
    assert result["models"] == ["echo"]
    assert result["refusal"] == ["INVALID_ARGUMENT", ["sampling.temperature"]]
    # modelwire is a namespace package there: the client's portion, no server.
    assert result["modelwire_file"] is None
    assert result["server"] is False
    installed = {requirement_name(name) for name in result["distributions"]}
    assert {"modelwire-client"} | DEPENDENCIES <= installed
    assert not installed & server_only_requirements(), "a dependency of the server alone came in"


def test_server_and_client_wheels_share_the_modelwire_package_without_sharing_a_file(
    client_wheel: Path, tmp_path: Path
) -> None:
    # The server is built from a copy, so no build/ or egg-info of the checkout gets into its wheel.
    source = tmp_path / "server-source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "server", source / "server", ignore=ignore)
    wheels = tmp_path / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(source),
        ]
    )
    (server_wheel,) = wheels.glob("modelwire-*.whl")
    server_files, server_metadata = wheel_files(server_wheel)
    client_files, _ = wheel_files(client_wheel)
    assert "modelwire/__init__.py" in server_files
    assert not server_files & client_files
    assert "modelwire-client" in requirement_names(server_metadata)

    # Both in one directory, as pip installs them into one site-packages.
    target = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(server_wheel),
            str(client_wheel),
        ]
    )
    probe = (
        "import importlib.util, json, sys; sys.path.insert(0, sys.argv[1]); "
        "print(json.dumps([importlib.util.find_spec(name).origin for name in sys.argv[2:]]))"
    )
    modules = ["modelwire", "modelwire.app.cli", "modelwire.client", "modelwire.v1.worker_pb2"]
    # -S: without site-packages, so this venv's editable modelwire stays out of it.
    origins = json.loads(run([sys.executable, "-S", "-c", probe, str(target), *modules]))
    assert origins == [
        str(target / "modelwire" / "__init__.py"),
        str(target / "modelwire" / "app" / "cli.py"),
        str(target / "modelwire" / "client" / "__init__.py"),
        str(target / "modelwire" / "v1" / "worker_pb2.py"),
    ]
