"""Which vLLM tool-call and reasoning parser a model needs, from its repo id: the one table.

vLLM answers 400 to every request with `tools` unless it was started with
`--enable-auto-tool-choice --tool-call-parser NAME`, and it splits a reasoning model's thinking
from its answer only with `--reasoning-parser NAME`; the right NAME depends on the model family.
`engines.py` asks `tool_call_parser(spec)` and `reasoning_parser(spec)` when it builds vLLM's
arguments; `status.py` reports the same answers. Names are those vLLM 0.32 registers (see
docs/features/tool_calling.md and reasoning_outputs.md); a real-engine test checks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relais_api import LLMDeploymentSpec

# The value of spec.toolCallParser / spec.reasoningParser that turns a parser off.
NONE = "none"

# (substring of the lowercased repo id, parser or None): the first match wins, so the more
# specific families come first. None means "this family has no parser", and stops the search.
TOOL_CALL_PARSERS: tuple[tuple[str, str | None], ...] = (
    ("qwen3-coder", "qwen3_coder"),
    ("qwen3", "hermes"),
    ("qwq", "hermes"),
    ("qwen2.5", "hermes"),
    ("hermes-2-pro", "hermes"),
    ("hermes-3", "hermes"),
    ("deepseek-r1-distill", None),  # the distills were not trained for tool calls
    ("deepseek-v3.1", "deepseek_v31"),
    ("deepseek-v3", "deepseek_v3"),
    ("deepseek-r1", "deepseek_v3"),
    ("llama-4", "llama4_pythonic"),
    ("llama-3.1", "llama3_json"),
    ("llama-3.2", "llama3_json"),
    ("llama-3.3", "llama3_json"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("ministral", "mistral"),
    ("devstral", "mistral"),
    ("magistral", "mistral"),
    ("gpt-oss", "openai"),
    ("functiongemma", "functiongemma"),
    # Gemma 3's own template offers no tools; vLLM's docs pair `pythonic` with their
    # tool_chat_template_gemma3_pythonic.jinja (pass it with --chat-template in spec.args).
    ("gemma-3", "pythonic"),
    ("gemma-4", "gemma4"),
    ("granite-20b-functioncalling", "granite-20b-fc"),
    ("granite-4", "granite4"),
    ("granite-3", "granite"),
    ("kimi-k2", "kimi_k2"),
    ("glm-4.7", "glm47"),
    ("glm-4.5", "glm45"),
    ("glm-4.6", "glm45"),
    ("minimax-m2", "minimax_m2"),
    ("phi-4-mini", "phi4_mini_json"),
    ("xlam", "xlam"),
    ("internlm2", "internlm"),
    ("jamba", "jamba"),
    ("olmo-3", "olmo3"),
    ("seed-oss", "seed_oss"),
    ("ernie-4.5", "ernie45"),
    ("hunyuan-a13b", "hunyuan_a13b"),
    ("lfm2", "lfm2"),
)

REASONING_PARSERS: tuple[tuple[str, str | None], ...] = (
    ("qwen3-coder", None),
    ("instruct-2507", None),  # Qwen3 2507 Instruct models do not think
    ("qwen3", "qwen3"),
    ("qwq", "deepseek_r1"),
    ("deepseek-r1", "deepseek_r1"),
    ("deepseek-v3.1", "deepseek_v3"),
    ("gpt-oss", "openai_gptoss"),
    ("magistral", "mistral"),
    ("granite-3.2", "granite"),
    ("granite-3.3", "granite"),
    ("kimi-k2-thinking", "kimi_k2"),
    ("glm-4.5", "glm45"),
    ("glm-4.6", "glm45"),
    ("glm-4.7", "glm47"),
    ("minimax-m2", "minimax_m2"),
    ("seed-oss", "seed_oss"),
    ("ernie-4.5-21b-a3b-thinking", "ernie45"),
    ("hunyuan-a13b", "hunyuan_a13b"),
    ("olmo-3", "olmo3"),
)


def lookup(table: tuple[tuple[str, str | None], ...], model: str) -> str | None:
    """The parser of the first family whose key is in the lowercased `model`, else None."""
    name = model.lower()
    return next((parser for key, parser in table if key in name), None)


def _choose(override: str | None, table: tuple[tuple[str, str | None], ...], model: str) -> str:
    if override is not None:
        return override
    return lookup(table, model) or NONE


def tool_call_parser(spec: LLMDeploymentSpec) -> str:
    """The tool-call parser vLLM runs with: spec.toolCallParser, else the table; `none`: off."""
    return _choose(spec.tool_call_parser, TOOL_CALL_PARSERS, spec.model)


def reasoning_parser(spec: LLMDeploymentSpec) -> str:
    """The reasoning parser vLLM runs with: spec.reasoningParser, else the table; `none`: off."""
    return _choose(spec.reasoning_parser, REASONING_PARSERS, spec.model)


def parser_args(spec: LLMDeploymentSpec) -> list[str]:
    """vLLM's flags for both parsers; nothing for a parser that is off."""
    args: list[str] = []
    if (tool := tool_call_parser(spec)) != NONE:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", tool]
    if (reasoning := reasoning_parser(spec)) != NONE:
        args += ["--reasoning-parser", reasoning]
    return args
