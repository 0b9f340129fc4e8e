"""What the installed llama.cpp was compiled for, checked against this CPU before any model loads.

Two ways a build breaks on an x86 server, both seen in the field:
- it uses instructions this CPU lacks (a `-march=native` wheel from another machine, reused from
  a pip cache): the first matrix product dies of SIGILL. Refused here with a message instead.
- it carries ggml's AMX kernels, which segfault on this Q4_K_M model on Sapphire Rapids and later
  (llama.cpp #20824). Those kernels are reached only through the extra weight buffers, so models
  are loaded without them (EXTRA_WEIGHT_BUFFERS), whatever the build.
`make install` builds a portable wheel (AVX2 baseline, no AMX; see docs/architecture.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modelwire.core.errors import StartupFailure

# ggml's feature names (ggml-cpu.cpp, ggml_backend_cpu_get_features) → Linux /proc/cpuinfo flags.
_CPU_FLAG = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


# ggml's extra weight buffers: the AMX kernels on a build that has them, CPU weight repacking
# otherwise. Off for every build: measured on an AVX2 EPYC they gain nothing beyond noise
# (bench/local_engine.py, docs/architecture.md), and they are the one way into the AMX crash.
EXTRA_WEIGHT_BUFFERS = False


class LlamaBuildUnfit(StartupFailure):
    """The installed llama.cpp cannot run on this CPU; raised at start, before any model loads."""


@dataclass(frozen=True, slots=True)
class LlamaBuild:
    features: frozenset[str]

    @classmethod
    def from_system_info(cls, system_info: str) -> LlamaBuild:
        """From llama.cpp's `llama_print_system_info()`, e.g. `CPU : SSE3 = 1 | AVX2 = 1 | …`."""
        return cls(frozenset(re.findall(r"([A-Z0-9_]+) = 1", system_info)))

    @classmethod
    def installed(cls) -> LlamaBuild:
        import llama_cpp

        return cls.from_system_info(llama_cpp.llama_print_system_info().decode(errors="replace"))

    def missing_instructions(self, cpu_flags: frozenset[str]) -> list[str]:
        return sorted(
            feature
            for feature, flag in _CPU_FLAG.items()
            if feature in self.features and flag not in cpu_flags
        )

    def check_runs_on(self, cpu_flags: frozenset[str] | None) -> None:
        if cpu_flags is None:  # not Linux: nothing to compare with
            return
        missing = self.missing_instructions(cpu_flags)
        if missing:
            raise LlamaBuildUnfit(
                "the installed llama-cpp-python was compiled for instructions this CPU lacks "
                f"({', '.join(missing)}); it was built on another machine (for example a wheel "
                "reused from a pip cache). Rebuild it here with `make llama-wheel` "
                "(docs/architecture.md, 'The llama.cpp build')."
            )


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """This CPU's feature flags, or None where /proc/cpuinfo does not list them."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else None
