"""The llama.cpp build fits every x86 server CPU, and the model is loaded the way the build needs.

The AMX crash (llama.cpp #20824) cannot happen on an AMD machine, so what is checked here is the
choice: the installed wheel is the portable one `make install` builds, every build (one with AMX
kernels included) loads models without extra buffers, the only way into those kernels, and a build
compiled for instructions this CPU lacks is refused at start with a message instead of SIGILL.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelwire.core.settings import ModelConfig
from modelwire.core.types import ModelMessage, ModelRequest, Role, SamplingParams
from modelwire.providers.llama import client as llamacpp
from modelwire.providers.llama.build import LlamaBuild, LlamaBuildUnfit, cpu_flags
from modelwire.providers.llama.client import LlamaCppClient

# llama_print_system_info() of a `-march=native` build on a Sapphire Rapids Xeon.
SAPPHIRE_RAPIDS_NATIVE = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = "
    "1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
SAPPHIRE_RAPIDS_FLAGS = frozenset(
    "pni ssse3 avx avx_vnni avx2 f16c fma bmi2 avx512f avx512vbmi avx512_vnni avx512_bf16 "
    "amx_tile amx_int8 amx_bf16".split()
)
EPYC_ZEN3_FLAGS = frozenset("pni ssse3 avx avx2 f16c fma bmi2".split())


def test_the_installed_build_is_the_portable_one() -> None:
    """`make install` builds llama-cpp-python with an AVX2 baseline and no AVX-512 or AMX; a wheel
    from anywhere else (pip's cache, another machine) would show up here."""
    build = LlamaBuild.installed()
    assert {"AVX2", "FMA", "F16C"} <= build.features
    assert not {feature for feature in build.features if feature.startswith(("AVX512", "AMX"))}


def test_a_native_build_runs_on_the_cpu_it_was_built_for() -> None:
    LlamaBuild.from_system_info(SAPPHIRE_RAPIDS_NATIVE).check_runs_on(SAPPHIRE_RAPIDS_FLAGS)


def test_a_build_for_another_cpu_is_refused_with_the_instructions_it_lacks() -> None:
    build = LlamaBuild.from_system_info(SAPPHIRE_RAPIDS_NATIVE)
    with pytest.raises(
        LlamaBuildUnfit,
        match=r"AMX_INT8, AVX512, AVX512_BF16, AVX512_VBMI, AVX512_VNNI, AVX_VNNI"
        r".*make llama-wheel",
    ):
        build.check_runs_on(EPYC_ZEN3_FLAGS)


def test_cpu_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 fma amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu avx2 "
        "fma amx_int8\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "fma", "amx_int8"})
    assert cpu_flags(tmp_path / "absent") is None
    assert cpu_flags() is None or "avx2" in (cpu_flags() or ())


def load(
    monkeypatch: pytest.MonkeyPatch,
    system_info: str,
    flags: frozenset[str],
    executor: ThreadPoolExecutor,
) -> LlamaCppClient:
    monkeypatch.setattr(
        LlamaBuild, "installed", classmethod(lambda cls: cls.from_system_info(system_info))
    )
    monkeypatch.setattr(llamacpp, "cpu_flags", lambda: flags)
    return LlamaCppClient.new_client(
        ModelConfig(name="gemma", provider="llamacpp", max_concurrency=1), executor
    )


async def test_every_build_loads_the_model_without_extra_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decision as the provider makes it, on the real model: on an AMX machine with an AMX build
    it loads without extra buffers, and generation then works (checked here on this CPU); so does
    the portable build."""
    with ThreadPoolExecutor(2) as executor:
        amx = load(
            monkeypatch,
            SAPPHIRE_RAPIDS_NATIVE,
            SAPPHIRE_RAPIDS_FLAGS | cpu_flags_or_empty(),
            executor,
        )
        assert not amx.model.use_extra_buffers
        request = ModelRequest(
            model="gemma",
            messages=(ModelMessage(Role.USER, "Hi"),),
            sampling=SamplingParams(temperature=0, max_new_tokens=3),
        )
        output = await amx.generate(request)
        await amx.close()
        assert output.usage is not None and output.usage.completion_tokens == 3

        portable = load(
            monkeypatch,
            "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | REPACK = 1 |",
            EPYC_ZEN3_FLAGS,
            executor,
        )
        assert not portable.model.use_extra_buffers
        await portable.close()


def test_a_build_that_does_not_fit_the_cpu_stops_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded: list[object] = []
    monkeypatch.setattr(llamacpp, "LlamaModel", lambda *args, **kwargs: loaded.append(args))
    with ThreadPoolExecutor(1) as executor, pytest.raises(LlamaBuildUnfit):
        load(monkeypatch, SAPPHIRE_RAPIDS_NATIVE, EPYC_ZEN3_FLAGS, executor)
    assert not loaded


def cpu_flags_or_empty() -> frozenset[str]:
    return cpu_flags() or frozenset()


# A stand-in for the Python that scripts/build_llama_wheel.sh is given: `pip wheel` writes a line
# to the build log, says it started (the `started` fifo) and writes its wheel once the test says
# go (the `go` fifo); `pip install` records which wheel it installed.
STUB_PYTHON = """#!/usr/bin/env bash
set -eu
if [ "$3" = wheel ]; then
    while [ "$1" != -w ]; do shift; done
    echo "[ 42%] Building CXX object ggml-cpu.c.o"
    echo build >>"$STUB_DIR/calls"
    echo started >"$STUB_DIR/started"
    read -r _ <"$STUB_DIR/go"
    touch "$2/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
else
    echo "install ${@: -1}" >>"$STUB_DIR/calls"
fi
"""
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build_llama_wheel.sh"


class ScriptRun:
    """One run of the build script, its output read line by line as it comes."""

    def __init__(self, python: Path, env: dict[str, str]) -> None:
        # As a terminal starts it: a harness run in the background (nohup, `&` without job
        # control) has SIGINT ignored, which its children inherit; a handler is not inherited.
        inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.process = subprocess.Popen(
                [str(BUILD_SCRIPT), str(python)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
        finally:
            signal.signal(signal.SIGINT, inherited)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self) -> str:
        """The next line it prints (the bound only turns a missing line into a failure)."""
        return self.lines.get(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def test_two_installs_at_once_build_once_and_show_the_build_s_progress(tmp_path: Path) -> None:
    """The first install builds and says where its log is and how far it got; the second waits for
    it (before, it deleted the first one's build directory and built again), then installs the
    same wheel."""
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    os.mkfifo(tmp_path / "started")
    os.mkfifo(tmp_path / "go")
    env = {
        **os.environ,
        "STUB_DIR": str(tmp_path),
        "MODELWIRE_WHEELHOUSE": str(tmp_path / "wheels"),
        "MODELWIRE_BUILD_PROGRESS_S": "0.2",
    }
    first = ScriptRun(stub, env)
    second: ScriptRun | None = None
    try:
        assert first.next_line().startswith("building llama-cpp-python 0.3.36 ")
        (tmp_path / "started").read_text()  # its `pip wheel` is running
        [house] = (tmp_path / "wheels").glob("llama-cpp-python-0.3.36-*.partial")
        assert (
            first.next_line()
            == f"build log: {house}/build.log (kept as {house.with_suffix('')}/build.log)"
        )
        progress = first.next_line()
        while not progress.endswith(
            " s): [ 42%] Building CXX object ggml-cpu.c.o"
        ):  # the log's latest line
            assert progress.startswith("  still building ("), progress
            progress = first.next_line()

        second = ScriptRun(stub, env)
        assert "another install is building llama-cpp-python" in second.next_line()
        (tmp_path / "go").write_text("go\n")

        assert first.process.wait(timeout=60) == 0 and second.process.wait(timeout=60) == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    wheel = house.with_suffix("") / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
    assert (tmp_path / "calls").read_text().splitlines() == [
        "build",
        f"install {wheel}",
        f"install {wheel}",
    ]
    assert (
        (house.with_suffix("") / "build.log").read_text().startswith("[ 42%] Building CXX object")
    )


# `pip wheel` as a build that runs until stopped: a child (the compiler) and its own pid recorded.
LONG_BUILD_PYTHON = """#!/usr/bin/env bash
if [ "$3" = wheel ]; then
    echo "[  3%] Building C object ggml.c.o"
    sleep 300 &
    echo "$$ $!" >"$STUB_DIR/pids"
    wait
fi
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_install_stops_its_build(tmp_path: Path, sent: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the terminal's whole process group) or a SIGTERM ends the install and its
    build, compilers included. Before, the build ran as a background job (which ignores Ctrl-C),
    the progress loop's `timeout` took the signal and the loop went on: the install neither
    stopped nor let the build go."""
    stub = tmp_path / "python"
    stub.write_text(LONG_BUILD_PYTHON)
    stub.chmod(0o755)
    env = {
        **os.environ,
        "STUB_DIR": str(tmp_path),
        "MODELWIRE_BUILD_PROGRESS_S": "0.2",
        "MODELWIRE_WHEELHOUSE": str(tmp_path / "wheels"),
    }
    run = ScriptRun(stub, env)
    pids: list[int] = []
    try:
        while not run.next_line().startswith("  still building ("):
            pass
        pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
        assert all(_alive(pid) for pid in pids)
        os.killpg(run.process.pid, sent)
        assert run.process.wait(timeout=20) != 0
        for pid in pids:
            for _ in range(100):
                if not _alive(pid):
                    break
                threading.Event().wait(0.1)
            assert not _alive(pid), f"build process {pid} still runs"
    finally:
        run.kill()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
