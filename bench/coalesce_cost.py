"""What coalescing (core/coalesce.py) costs a paced delta, in instructions: the same paced stream
read bare and through `coalesced(..., coalesce_outputs)`, under callgrind. Each delta arrives one
loop turn after it was asked for, so the consumer always waits and nothing ever merges: the
difference is the reader task's hop, its future and the list it hands over.

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cc.%p \\
        .venv/bin/python bench/coalesce_cost.py bare|coalesced [DELTAS]

Each run dumps one file whose `summary:` line is the instructions of its DELTAS deltas (20,000 by
default) after 2,000 warm-up deltas; divide the two runs' difference by DELTAS.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from callgrind_control import counted
from modelwire.core.coalesce import coalesce_outputs, coalesced
from modelwire.core.types import ModelOutput

WARM_UP = 2000


async def _paced(deltas: int) -> AsyncIterator[ModelOutput]:
    loop = asyncio.get_running_loop()
    for _ in range(deltas):
        arrived = loop.create_future()
        loop.call_soon(arrived.set_result, None)
        await arrived
        yield ModelOutput(text="x")


async def _read(mode: str, deltas: int) -> None:
    stream = _paced(deltas)
    if mode == "coalesced":
        stream = coalesced(stream, coalesce_outputs)
    async for _ in stream:
        pass


async def main(mode: str, deltas: int) -> None:
    await _read(mode, WARM_UP)
    with counted(mode):
        await _read(mode, deltas)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode not in ("bare", "coalesced"):
        sys.exit(__doc__)
    asyncio.run(main(mode, int(sys.argv[2]) if len(sys.argv) > 2 else 20_000))
