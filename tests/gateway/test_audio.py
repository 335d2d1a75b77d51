"""Speech to text through the gateway (issue #17): a multipart upload routed by its `model`
field, the engine's name put in its place, the file passed on untouched; limits and bad forms."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes.process import FakeEngine
from tests.gateway.conftest import VLLM_MODEL, GatewayFactory, GatewayServer, deployment

AUDIO = bytes(range(256)) * 400  # 100 KiB of "audio"


@pytest.fixture
def whisper(start_gateway: GatewayFactory, vllm_engine: FakeEngine) -> GatewayServer:
    entry = deployment("w", "vllm", "whisper", [vllm_engine.url], engine_model=VLLM_MODEL)
    return start_gateway([entry], max_upload_bytes=200_000)


def test_the_openai_sdk_transcribes_through_the_gateway(
    whisper: GatewayServer, vllm_engine: FakeEngine
) -> None:
    client = openai.OpenAI(base_url=whisper.url + "/v1", api_key="x", max_retries=0)
    text = client.audio.transcriptions.create(
        model="whisper", file=("speech.wav", AUDIO, "audio/wav"), language="en"
    )
    assert text.text == f"fake transcription of {len(AUDIO)} bytes"
    plain = client.audio.translations.create(
        model="whisper", file=("speech.wav", AUDIO, "audio/wav"), response_format="text"
    )
    assert "fake transcription" in str(plain)
    sent = [r["json"] for r in vllm_engine.requests_sync() if r["path"].startswith("/v1/audio")]
    assert [s["model"] for s in sent] == [VLLM_MODEL, VLLM_MODEL]  # the engine's name
    assert sent[0]["language"] == "en"  # every other field forwarded
    assert sent[0]["file_bytes"] == len(AUDIO)  # the file, whole and untouched


def test_upload_limits_and_broken_forms(whisper: GatewayServer) -> None:
    url = whisper.url + "/v1/audio/transcriptions"
    too_big = httpx.post(url, files={"file": ("a.wav", b"x" * 300_000)}, data={"model": "whisper"})
    assert too_big.status_code == 413
    no_model = httpx.post(url, files={"file": ("a.wav", AUDIO)})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"
    not_form = httpx.post(url, json={"model": "whisper"})
    assert not_form.status_code == 400
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    truncated = httpx.post(
        url, content=b'--xyz\r\nContent-Disposition: form-data; name="model"', headers=headers
    )
    assert truncated.status_code == 400
    assert truncated.json()["error"]["code"] == "invalid_form"
    unknown = httpx.post(url, files={"file": ("a.wav", AUDIO)}, data={"model": "nope"})
    assert unknown.status_code == 404
