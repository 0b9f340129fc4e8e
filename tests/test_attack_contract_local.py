"""The embedded model's grammar door, tried again after issue 22 landed: a GBNF grammar of about
300 or more nested groups made the Python GBNF checker (providers/llama/gbnf_check.py) raise
RecursionError on the pool, and the caller got INTERNAL. It is INVALID_ARGUMENT naming
output_format.grammar, and the worker serves on."""

from __future__ import annotations

import grpc
import pytest

from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.client.requests import grammar_format
from modelwire.providers.llama.gbnf_check import MAX_GROUP_NESTING

MODEL = "gemma-3-270m"


@pytest.mark.parametrize("depth", [400, 20_000])
async def test_a_grammar_of_deeply_nested_groups_is_invalid_argument_not_internal(
    embedded_worker: Worker, depth: int
) -> None:
    grammar = "root ::= " + "(" * depth + '"a"' + ")" * depth
    async with ModelWorkerClient(embedded_worker.address, timeout=60) as client:
        with pytest.raises(ModelwireCallError) as refused:
            await client.generate(
                MODEL, "Hi", output_format=grammar_format(grammar), max_new_tokens=2
            )
        error = refused.value
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "output_format.grammar" in error.message, error.message
        said = f"groups nested more than {MAX_GROUP_NESTING} deep"
        assert said in error.message, error.message
        nested = "root ::= " + "(" * MAX_GROUP_NESTING + '"a"' + ")" * MAX_GROUP_NESTING
        output = await client.generate(
            MODEL, "Hi", output_format=grammar_format(nested), max_new_tokens=2
        )
        assert output.text == "a"
