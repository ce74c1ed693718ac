"""What the service exposes without a key: the start-up refusal, the docs, the auth throttle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.guard import (
    bearer_token,
    body_limits,
    check_exposure,
    client_address,
    key_matches,
    proxy_warning,
)
from serving.services.ratelimit import AuthFailureLimiter, RateLimiter, TooManyAuthFailures
from serving.settings import Settings

DOCS = ("/openapi.json", "/docs", "/redoc")


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_start_without_a_key(host: str) -> None:
    assert check_exposure(settings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "example.org"])
def test_other_hosts_need_a_key_or_an_explicit_open_server(host: str) -> None:
    refusal = check_exposure(settings(host=host))
    assert refusal is not None and "API_KEY" in refusal and "ALLOW_NO_AUTH=true" in refusal
    assert check_exposure(settings(host=host, api_key="k")) is None
    assert check_exposure(settings(host=host, allow_no_auth=True)) is None


@pytest.mark.slow  # a python -m serving process
def test_python_m_serving_refuses_an_open_public_host_before_loading(tmp_path: Path) -> None:
    dropped = {"API_KEY", "ALLOW_NO_AUTH", "MODEL_DIR", "PROFILE_PATH"}
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(HOST="0.0.0.0", PORT="8999", MODEL_DIR=str(tmp_path / "no-such-checkpoint"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serving"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    refusal = [line for line in output.splitlines() if "refusing to serve" in line]
    assert refusal == [
        "ERROR serving: refusing to serve on HOST=0.0.0.0 without API_KEY: set API_KEY, bind "
        "HOST=127.0.0.1, or set ALLOW_NO_AUTH=true to run an open server"
    ], output
    assert "Started server" not in output and "no-such-checkpoint" not in output
    assert time.monotonic() - started < 60


def test_docs_are_guarded_by_the_key_unless_public() -> None:
    """The real app in-process (no lifespan: the guard answers before a route needs the engine)."""
    keyed = TestClient(create_app(settings(api_key="k")))
    public = TestClient(create_app(settings(api_key="k", public_docs=True)))
    for path in DOCS:
        assert keyed.get(path).status_code == 401, path
        assert public.get(path).status_code == 200, path
    assert public.get("/voices").status_code == 401, "PUBLIC_DOCS opens the docs only"
    assert keyed.get("/openapi.json", headers={"Authorization": "Bearer k"}).status_code == 200
    schemes = public.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_preflights_pass_and_refusals_carry_cors_headers() -> None:
    """The guard sits inside CORS: a browser UI on another origin can read the 401."""
    app = TestClient(create_app(settings(api_key="k", cors_origins=["http://ui.example"])))
    origin = {"Origin": "http://ui.example"}
    preflight = app.options("/tts", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    refused = app.post("/tts", headers=origin)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://ui.example"


def test_open_paths_stay_open_under_a_root_path() -> None:
    app = create_app(settings(api_key="k", public_docs=True))
    behind_proxy = TestClient(app, root_path="/api")
    assert behind_proxy.get("/api/voices").status_code == 401
    assert behind_proxy.get("/api/openapi.json").status_code == 200


def test_a_wrong_key_is_throttled_per_address_and_key_within_a_minute() -> None:
    limiter = AuthFailureLimiter(2)
    limiter.record("a", "stale", now=0.0)
    limiter.record("a", "stale", now=10.0)
    limiter.check("b", "stale", now=10.0)  # the same key from another address
    limiter.check("a", "other", now=10.0)  # another key from the same address
    with pytest.raises(TooManyAuthFailures) as info:
        limiter.check("a", "stale", now=11.0)
    assert info.value.status_code == 429 and info.value.headers["Retry-After"] == "49"
    limiter.check("a", "stale", now=60.0)  # the first failure left the window


def test_a_guessing_address_gets_429_before_any_key_is_compared() -> None:
    """After 3 different wrong keys in a minute, any key new to the address is refused
    uncompared (no oracle for the guesser); a key that worked there before still passes, and
    other addresses keep their own count."""
    limiter = AuthFailureLimiter(3)
    limiter.worked("office", "right", now=0.0)
    for i in range(3):
        limiter.check("office", f"guess-{i}", now=float(i))
        limiter.record("office", f"guess-{i}", now=float(i))
    for key in ("guess-3", "right-but-new-here"):
        with pytest.raises(TooManyAuthFailures, match="different wrong API keys") as info:
            limiter.check("office", key, now=5.0)
        assert info.value.headers["Retry-After"] == "55"
    limiter.check("office", "right", now=5.0)  # worked here before the guessing began
    limiter.check("neighbour", "right-but-new-here", now=5.0)
    limiter.check("office", "guess-4", now=60.0)  # the first different key left the window
    for i in range(3):  # an hour later the key that worked is new again
        limiter.record("office", f"late-{i}", now=3600.0 + i)
    with pytest.raises(TooManyAuthFailures):
        limiter.check("office", "right", now=3603.0)


def wrong_key_statuses(peer: str, *sent: tuple[str, str | None], **config: object) -> list[int]:
    """What a server with AUTH_FAILURES_PER_MINUTE=2 answers a wrong key sent from ``peer`` with
    each (X-Forwarded-For, X-Proxy-Secret) in ``sent``: 429 once the address it takes for the
    client has failed twice, so the statuses show which address that was."""
    app = create_app(settings(api_key="right", auth_failures_per_minute=2, **config))
    http = TestClient(app, client=(peer, 5000))  # no lifespan: the guard answers before routes
    answers = []
    for forwarded, secret in sent:
        headers = {"Authorization": "Bearer wrong", "X-Forwarded-For": forwarded}
        if secret is not None:
            headers["X-Proxy-Secret"] = secret
        answers.append(http.get("/voices", headers=headers).status_code)
    return answers


def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy() -> None:
    """The address the guard throttles by: from the trusted balancer, each forwarded client has
    its own count; from anyone else the header is ignored and the connection's address counts."""
    a, b = ("203.0.113.7", None), ("203.0.113.8", None)
    assert wrong_key_statuses("127.0.0.1", a, a, b, a, trusted_proxies="127.0.0.1") == [
        401,
        401,
        401,  # b is another client
        429,
    ]
    assert wrong_key_statuses("198.51.100.1", a, a, b, trusted_proxies="127.0.0.1") == [
        401,
        401,
        429,  # b is the same untrusted peer
    ]
    balancer = settings(trusted_proxies="127.0.0.1, 10.0.0.0/8").trusted_proxies

    def scope(peer: str, *forwarded: str) -> dict:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
        return {"type": "http", "client": (peer, 5000), "headers": headers}

    assert client_address(scope("127.0.0.1", "203.0.113.7"), balancer) == "203.0.113.7"
    assert client_address(scope("198.51.100.1", "203.0.113.7"), balancer) == "198.51.100.1"
    assert client_address(scope("127.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.5"), balancer) == (
        "203.0.113.7"  # the last hop before the trusted ones
    )
    assert client_address(scope("127.0.0.1", "1.1.1.1", "10.0.0.5"), balancer) == "1.1.1.1"
    assert client_address(scope("127.0.0.1", "not-an-address"), balancer) == "127.0.0.1"
    assert client_address(scope("127.0.0.1"), balancer) == "127.0.0.1"
    assert client_address(scope("127.0.0.1", "203.0.113.7"), []) == "127.0.0.1"  # trust none


def test_with_a_proxy_secret_x_forwarded_for_needs_the_secret_too() -> None:
    """Any local process can connect from the balancer's address; only the balancer knows the
    secret it sends, so without it the connection's own address stands."""
    config = {"trusted_proxies": "127.0.0.1", "proxy_secret": "s3cret"}
    with_secret = [("203.0.113.7", "s3cret"), ("203.0.113.7", "s3cret"), ("203.0.113.8", "s3cret")]
    assert wrong_key_statuses("127.0.0.1", *with_secret, **config) == [401, 401, 401]
    guessed = [("203.0.113.7", "guess"), ("203.0.113.7", None), ("203.0.113.8", "guess")]
    assert wrong_key_statuses("127.0.0.1", *guessed, **config) == [401, 401, 429]
    balancer = settings(trusted_proxies="127.0.0.1").trusted_proxies

    def scope(peer: str, secret: str | None) -> dict:
        headers = [(b"x-forwarded-for", b"203.0.113.7")]
        if secret is not None:
            headers.append((b"x-proxy-secret", secret.encode()))
        return {"type": "http", "client": (peer, 5000), "headers": headers}

    assert client_address(scope("127.0.0.1", "s3cret"), balancer, "s3cret") == "203.0.113.7"
    assert client_address(scope("127.0.0.1", "guess"), balancer, "s3cret") == "127.0.0.1"
    assert client_address(scope("127.0.0.1", None), balancer, "s3cret") == "127.0.0.1"
    assert client_address(scope("10.1.2.3", "s3cret"), balancer, "s3cret") == "10.1.2.3"
    assert client_address(scope("10.1.2.3", "s3cret"), [], "s3cret") == "203.0.113.7"
    assert "PROXY_SECRET" in (proxy_warning(settings(trusted_proxies="127.0.0.1")) or "")
    assert proxy_warning(settings(trusted_proxies="127.0.0.1", proxy_secret="s")) is None


def test_headers_over_the_cap_are_a_431_under_any_server() -> None:
    """The guard's own check, for an app run without ``python -m serving``'s protocol (which
    refuses them before they end)."""
    app = TestClient(create_app(settings(max_header_kb=4)))
    refused = app.get("/nope", headers={"X-Big": "a" * 5000})
    assert refused.status_code == 431 and "MAX_HEADER_KB" in refused.json()["message"]
    assert app.get("/nope", headers={"X-Small": "a" * 3000}).status_code == 404


def test_idle_addresses_are_forgotten() -> None:
    """A spray of addresses must not grow the limiters' memory without bound."""
    limiter = RateLimiter(5)
    for i in range(5000):
        limiter.check(f"old-{i}", now=0.0)
    for i in range(5000):
        limiter.check(f"new-{i}", now=100.0)
    assert len(limiter._windows) == 5000, "the old addresses, idle for 100 s, were dropped"


def test_one_token_parser_and_a_comparison_over_every_key() -> None:
    assert bearer_token("Bearer abc ") == "abc"
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") == "" and bearer_token(None) == ""
    keys = frozenset({"first", "second"})
    assert key_matches("second", keys) and not key_matches("secon", keys)
    assert not key_matches("", keys)


def test_body_caps_follow_the_settings() -> None:
    form, other = body_limits(settings(max_upload_mb=2, max_body_mb=0.5, max_text_chars=1000))
    assert other == 2**19
    assert 2 * 2**20 < form < 2 * 2**20 + 2**17
