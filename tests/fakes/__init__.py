"""Protocol-faithful fake Ollama, TGI and vLLM servers for tests and benchmarks (no model, no GPU).

`python -m tests.fakes.ollama` / `tests.fakes.tgi` / `tests.fakes.vllm` run one; `FakeEngine` in
`tests.fakes.process` starts one as a subprocess (on a free loopback port unless given one) and
drives its switches over `/_fake/*`.

What a test can rely on: Ollama accepts any model name unless the `models` switch lists some
(`/api/tags` shows `fake:latest` by default); TGI serves one model and reports it
(`fake-org/fake-model` or the first of `models`) whatever the request names; vLLM serves
`fake-org/fake-model` (or the `models` switch) and answers other names with 404; it also loads
LoRA adapters at run time as vLLM does (`tests.fakes.lora`: slots, load cost,
`/relais-fake/lora`). Tools, images, reasoning, embeddings and logprobs follow the deterministic
rules in `tests.fakes.core`.
"""
