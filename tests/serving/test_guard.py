"""Hostile bodies and keys against live servers: refused from the headers or after at most the cap.

Bodies are generated lazily (never in the test's memory) and count what the client sent; the
server's RSS and the files it holds open in its TMPDIR are sampled while the request runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from watcher import Watcher
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.service

KEY = "guard-test-key"
IDLE_S = 1
MIB = 2**20
JSON_BOMB = 200 * MIB
UPLOAD_BOMB = 1024 * MIB
# What may reach the server before its answer: the cap plus socket buffers on both sides.
SENT_BOUND = 48 * MIB
RSS_BOUND = 50 * MIB
BOUNDARY = "guardboundary"
FILE_PART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="text"\r\n\r\nhi\r\n'
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="speaker_file"; filename="big.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n"
).encode()
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


class LazyBody:
    """``total`` bytes of zeros after ``preamble``, produced a MiB at a time and counted."""

    def __init__(self, total: int, preamble: bytes = b"") -> None:
        self.total = total
        self.preamble = preamble
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.preamble
        block = b"\0" * MIB
        while self.sent < self.total:
            self.sent += len(block)
            yield block


class ServerWatch(Watcher):
    """Samples a server's RSS and the size of its open files under ``tmpdir`` every 5 ms."""

    def __init__(self, pid: int, tmpdir: Path | None = None) -> None:
        super().__init__()
        self.pid = pid
        self.tmpdir = str(tmpdir) if tmpdir else None
        self.baseline_rss = self.rss()
        self.peak_rss = self.baseline_rss
        self.peak_tmp = 0

    def rss(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def tmp_bytes(self) -> int:
        total = 0
        fds = Path(f"/proc/{self.pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd).startswith(self.tmpdir):
                    total += os.stat(fd).st_size
            except OSError:
                continue  # closed between listing and reading
        return total

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            if self.tmpdir:
                self.peak_tmp = max(self.peak_tmp, self.tmp_bytes())
            time.sleep(0.005)

    @property
    def rss_growth(self) -> int:
        return self.peak_rss - self.baseline_rss


def post(server, path: str, body: LazyBody, headers: dict[str, str]) -> httpx.Response | None:
    """POST the lazy body; None when the server closed the connection before httpx could read.

    httpx writes the whole body before it reads the answer, so a server that answers early and
    closes may surface as a write error instead of the response.
    """
    try:
        with server.client() as http:
            return http.post(path, content=body, headers=headers)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return None


def answer_to_headers(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    """POST only a request's headers (never its body) and read the server's answer."""
    address = urlsplit(url)
    head = f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(f"{head}\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def assert_refused(response: httpx.Response | None, status: int, needle: str) -> None:
    if response is None:
        return
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message", "type"} and needle in body["message"], body
    assert response.headers["connection"] == "close"


@dataclass
class Keyed:
    """The live server and the TMPDIR it was started with."""

    server: object
    tmpdir: Path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server):
    """A server with an API key, its own TMPDIR (watched for spooled uploads) and a speech
    socket idle timeout of one second."""
    root = tmp_path_factory.mktemp("guarded")
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    live = ready_server(
        root,
        tiny_checkpoint,
        root / "voices",
        API_KEY=KEY,
        TMPDIR=str(tmpdir),
        WARMUP="false",
        SOCKET_IDLE_TIMEOUT_S=str(IDLE_S),
    )
    yield Keyed(live, tmpdir)
    live.stop()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_huge_json_body_is_refused_without_being_read(server, declared: bool) -> None:
    body = LazyBody(JSON_BOMB)
    headers = {"Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(JSON_BOMB)
    started = time.monotonic()
    with ServerWatch(server.process.pid) as watch:
        response = post(server, "/v1/audio/speech", body, headers)
    assert_refused(response, 413, "MAX_BODY_MB")
    assert body.sent < SENT_BOUND, f"the client got to send {body.sent / MIB:.0f} MiB"
    assert watch.rss_growth < RSS_BOUND, f"server RSS grew {watch.rss_growth / MIB:.0f} MiB"
    assert time.monotonic() - started < 15


def test_the_key_is_checked_before_the_body(keyed: Keyed) -> None:
    body = LazyBody(JSON_BOMB)
    headers = {"Content-Type": "application/json"}
    with ServerWatch(keyed.server.process.pid) as watch:
        response = post(keyed.server, "/v1/audio/speech", body, headers)
    assert_refused(response, 401, "API key")
    if response is not None:
        assert response.headers["www-authenticate"] == "Bearer"
    assert body.sent < SENT_BOUND
    assert watch.rss_growth < RSS_BOUND


def test_a_huge_chunked_upload_neither_fills_memory_nor_the_temp_dir(keyed: Keyed) -> None:
    body = LazyBody(UPLOAD_BOMB, FILE_PART)
    headers = {"Content-Type": FORM_TYPE, "Authorization": f"Bearer {KEY}"}
    with ServerWatch(keyed.server.process.pid, keyed.tmpdir) as watch:
        response = post(keyed.server, "/tts", body, headers)
    assert_refused(response, 413, "MAX_UPLOAD_MB")
    assert body.sent < SENT_BOUND, f"the client got to send {body.sent / MIB:.0f} MiB"
    assert watch.rss_growth < RSS_BOUND, f"server RSS grew {watch.rss_growth / MIB:.0f} MiB"
    # The cap is MAX_UPLOAD_MB (2 here) plus a small allowance for the other form fields.
    assert watch.peak_tmp < 4 * MIB, f"{watch.peak_tmp / MIB:.0f} MiB spooled to TMPDIR"
    left = sum(path.stat().st_size for path in keyed.tmpdir.rglob("*") if path.is_file())
    assert left < 4 * MIB, f"{left / MIB:.0f} MiB left in TMPDIR"


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [
        ("/v1/audio/speech", "application/json", "MAX_BODY_MB"),
        ("/voices", FORM_TYPE, "MAX_UPLOAD_MB"),
    ],
)
def test_a_declared_oversize_body_is_refused_from_its_headers(
    keyed: Keyed, path: str, content_type: str, needle: str
) -> None:
    """Only the headers are sent: the answer must come without waiting for any body byte."""
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(UPLOAD_BOMB),
        "Authorization": f"Bearer {KEY}",
    }
    status, body = answer_to_headers(keyed.server.url, path, headers)
    assert status == 413 and needle in body["message"], body


def test_bodies_within_the_caps_still_work(keyed: Keyed, spoken_wav: bytes) -> None:
    with keyed.server.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        files = {"speaker_file": ("ref.wav", spoken_wav, "audio/wav")}
        assert http.post("/tts", data={"text": "Hi."}, files=files).status_code == 200
        speech = http.post("/v1/audio/speech", json={"input": "Hi.", "response_format": "wav"})
        assert speech.status_code == 200, speech.text


def test_docs_follow_the_key(keyed: Keyed) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(f"{keyed.server.url}{path}").status_code == 401, path
    with keyed.server.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        assert http.get("/openapi.json").json()["info"]["title"] == "fishbench"
    assert httpx.get(f"{keyed.server.url}/health").status_code == 200


def test_wrong_keys_are_throttled_per_client_address(keyed: Keyed) -> None:
    """50 guesses from one address: 10 (AUTH_FAILURES_PER_MINUTE) 401s, then 429s, and a key new
    to that address is refused uncompared (the guesser finds no 200); every other address goes
    on."""
    right = {"Authorization": f"Bearer {KEY}"}
    guesser = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=keyed.server.url, transport=guesser, timeout=30) as http:
        answers = [
            http.get("/emotions", headers={"Authorization": f"Bearer guess-{i}"}) for i in range(50)
        ]
        right_key_new_to_the_guesser = http.get("/emotions", headers=right)
    statuses = [answer.status_code for answer in answers]
    assert statuses == [401] * 10 + [429] * 40, statuses
    assert answers[-1].json()["error"] == "too_many_auth_failures"
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert right_key_new_to_the_guesser.status_code == 429, "no oracle for a guesser"
    with keyed.server.client(headers=right) as http:
        assert http.get("/emotions").status_code == 200, "another address is not throttled"


def socket_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


def test_the_socket_handshake_gets_the_http_answers_401_then_429(keyed: Keyed) -> None:
    """From its own address: wrong keys get 401, then 429 with Retry-After (try later, not
    forbidden); a key that opened a socket from there before the guessing still does."""
    source = {"source_address": ("127.0.0.3", 0)}
    right = {"Authorization": f"Bearer {KEY}"}
    with connect(socket_url(keyed.server), additional_headers=right, **source) as ws:
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(30)) == {"type": "done", "sentences": 0}
    statuses = []
    for i in range(11):
        with pytest.raises(InvalidStatus) as refused:
            connect(
                socket_url(keyed.server),
                additional_headers={"Authorization": f"Bearer socket-guess-{i}"},
                open_timeout=30,
                **source,
            )
        statuses.append(refused.value.response.status_code)
    assert statuses == [401] * 10 + [429], statuses
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60
    with connect(socket_url(keyed.server), additional_headers=right, **source) as ws:
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(30)) == {"type": "done", "sentences": 0}


def test_a_socket_that_sends_nothing_is_closed_after_the_idle_timeout(keyed: Keyed) -> None:
    right = {"Authorization": f"Bearer {KEY}"}
    with connect(socket_url(keyed.server), additional_headers=right, open_timeout=30) as ws:
        opened = time.monotonic()
        event = json.loads(ws.recv(10 * IDLE_S))
        with pytest.raises(ConnectionClosed):
            ws.recv(10)
        waited = time.monotonic() - opened
    assert event["error"] == "idle_timeout" and "SOCKET_IDLE_TIMEOUT_S" in event["message"]
    assert ws.close_code == 1008 and IDLE_S * 0.9 <= waited < 5 * IDLE_S, waited
