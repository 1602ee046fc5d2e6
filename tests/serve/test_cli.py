"""``peftkit serve`` as users start it: a process on 127.0.0.1 that drains its requests on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from peftkit.errors import ConfigError
from peftkit.serve import ServeConfig

from .conftest import Models, free_port


def test_sigterm_finishes_requests_in_flight_then_exits(models: Models) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "peftkit",
        "serve",
        str(models.base),
        "--adapter",
        f"lora-a={models.adapters['lora-a']}",
        "--adapter",
        f"broken={models.base}",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--drain-seconds",
        "30",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                "the server did not start"
            )
            time.sleep(0.2)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny", "lora-a"]
        chunks: list[dict[str, object]] = []
        first = threading.Event()

        def stream() -> None:
            body = {
                "model": "lora-a",
                "prompt": "a",
                "max_tokens": 240,
                "temperature": 1.0,
                "seed": 1,
                "stream": True,
            }
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        chunks.append(json.loads(line[6:]))
                        first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        process.send_signal(signal.SIGTERM)
        reader.join(60)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read() if process.stdout else ""
    assert "adapter 'broken' refused" in output  # reported, and the others were served
    assert "adapter lora-a: vLLM serves it too" in output
    # the stream was not cut off
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_a_yaml_file_and_flags_make_one_config(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "serve.yaml"  # type: ignore[operator]
    path.write_text("model: smollm2-135m\nport: 9000\nadapters:\n  a: outputs/a\nmax_batch: 4\n")
    monkeypatch.setenv("PEFTKIT_API_KEY", "from-env")
    config = ServeConfig.load(path, {"adapters": {"b": "outputs/b"}, "port": "9001", "model": None})
    assert (config.model, config.port, config.max_batch, config.api_key) == (
        "smollm2-135m",
        9001,
        4,
        "from-env",
    )
    assert config.adapters == {"a": "outputs/a", "b": "outputs/b"}
    with pytest.raises(ConfigError) as caught:
        ServeConfig.from_values({"model": "", "max_batch": "0", "port": "http"})
    text = str(caught.value)
    assert "model is required" in text and "max_batch=0" in text and "port=" in text
