"""Protocol-faithful fake Ollama, TGI and vLLM servers for tests and benchmarks (no model, no GPU).

`python -m tests.fakes.ollama` / `tests.fakes.tgi` / `tests.fakes.vllm` run one; `FakeEngine` in
`tests.fakes.process` starts one as a subprocess (on a free loopback port unless given one) and
drives its switches over `/_fake/*`.
"""
