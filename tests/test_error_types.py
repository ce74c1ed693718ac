"""Whose fault is it: a caller's mistake is a 4xx / exit 2, a bug is a 500 / traceback."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI

from engine.audio_io import AudioInputError
from engine.errors import ConfigError, RequestError
from engine.sampling import DEFAULT_SAMPLING, MAX_NEW_TOKENS, SamplingParams, read_options
from harness.cli import _user_error
from serving.errors import install_error_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/caller")
    async def caller() -> None:
        raise RequestError("the prompt (9000 tokens) does not fit max_seq_len 4096")

    @app.get("/audio")
    async def audio() -> None:
        raise AudioInputError("reference audio is 120.0 s; the limit is 90 s")

    @app.get("/bug")
    async def bug() -> None:
        raise ValueError("operands could not be broadcast together")

    return app


def _get(path: str) -> httpx.Response:
    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path)

    return asyncio.run(request())


@pytest.mark.parametrize("path", ["/caller", "/audio"])
def test_a_request_error_is_a_422_with_its_message(path: str) -> None:
    response = _get(path)
    assert response.status_code == 422
    assert response.json()["type"] == "invalid_request_error"
    assert "limit" in response.json()["message"] or "max_seq_len" in response.json()["message"]


def test_a_plain_value_error_is_a_bug_500_with_a_request_id_in_body_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="serving.errors"):
        response = _get("/bug")
    body = response.json()
    assert response.status_code == 500 and body["error"] == "internal_error"
    assert "broadcast" not in body["message"]  # internals stay in the log
    request_id = body["request_id"]
    assert request_id in body["message"]
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info and "broadcast" in str(record.exc_info[1])


def test_engine_input_errors_are_request_errors() -> None:
    with pytest.raises(RequestError, match="temperature"):
        SamplingParams(temperature=5.0)


def test_synthesis_options_default_from_sampling_params_and_refuse_unknown_keys() -> None:
    assert read_options({}) == (DEFAULT_SAMPLING, MAX_NEW_TOKENS, None)
    params, budget, fixed = read_options({"seed": 3, "top_p": 0.5, "fixed_frames": 8})
    assert params == SamplingParams(top_p=0.5, seed=3) and (budget, fixed) == (MAX_NEW_TOKENS, 8)
    with pytest.raises(TypeError, match="temprature"):
        read_options({"temprature": 0.5})


def test_cli_exits_2_on_user_errors_and_keeps_tracebacks_for_bugs() -> None:
    assert _user_error(ConfigError("grid 'x' has empty axes: precision")) == (
        "grid 'x' has empty axes: precision"
    )
    assert _user_error(RequestError("text is empty")) == "text is empty"
    assert _user_error(ValueError("too many values to unpack")) is None
    assert _user_error(KeyError("slow_head")) is None
