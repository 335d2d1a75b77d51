"""Every parser in the operator's table is one real vLLM registers (else vLLM will not start)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from relais_operator import parsers

from tests.real_engine import vllm

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(300)]

LIST_PARSERS = """
import json
from vllm.reasoning import ReasoningParserManager
from vllm.tool_parsers import ToolParserManager
print(json.dumps({
    "tool": ToolParserManager.list_registered(),
    "reasoning": ReasoningParserManager.list_registered(),
}))
"""


def test_table_names_only_parsers_vllm_registers() -> None:
    vllm.require()
    python = str(vllm.VLLM_VENV / "bin" / "python")
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    done = subprocess.run(
        [python, "-c", LIST_PARSERS], capture_output=True, text=True, env=env, check=True
    )
    registered = json.loads(done.stdout.strip().splitlines()[-1])
    tool = {parser for _, parser in parsers.TOOL_CALL_PARSERS if parser is not None}
    reasoning = {parser for _, parser in parsers.REASONING_PARSERS if parser is not None}
    assert tool - set(registered["tool"]) == set()
    assert reasoning - set(registered["reasoning"]) == set()
