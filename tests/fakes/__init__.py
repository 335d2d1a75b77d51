"""Protocol-faithful fake Ollama and TGI servers for tests and benchmarks (no model, no GPU).

`python -m tests.fakes.ollama` / `python -m tests.fakes.tgi` run one; `FakeEngine` in
`tests.fakes.process` starts one as a subprocess on a free loopback port and drives its switches
over `/_fake/*`.
"""
