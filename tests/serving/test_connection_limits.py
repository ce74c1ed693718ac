"""What reaches ``python -m serving`` before a request exists: headers over MAX_HEADER_KB get 431
(a never-ending one as soon as it passes the cap, holding no memory), headers that stop arriving
get 408 after HEADER_TIMEOUT_S, connections past MAX_CONNECTIONS get 503; and a refused WebSocket
handshake is not logged as a server error.

Everything is read over raw sockets, as an attacker would send it.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.service

KEY = "limits-test-key"
HEADER_TIMEOUT_S = 3
MAX_CONNECTIONS = 48  # above the 40 connections of the never-ending header
MIB = 2**20
HEAD = b"GET /health HTTP/1.1\r\nHost: limits\r\n"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server):
    root = tmp_path_factory.mktemp("limits")
    live = ready_server(
        root,
        tiny_checkpoint,
        root / "voices",
        API_KEY=KEY,
        WARMUP="false",
        HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    yield live
    live.stop()


def open_socket(server, timeout: float = 60) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=timeout)


def answer(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one answer on ``sock``, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.mark.parametrize(
    "head",
    [
        HEAD + b"X-Big: " + b"a" * MIB + b"\r\n\r\n",
        HEAD + b"".join(b"h%d: v\r\n" % i for i in range(20_000)) + b"\r\n",
    ],
    ids=["one 1 MiB header", "20,000 headers"],
)
def test_complete_headers_over_the_cap_get_431(limited, head: bytes) -> None:
    with open_socket(limited) as sock:
        sock.sendall(head)
        status, body = answer(sock)
    assert status == 431 and body["error"] == "headers_too_large", body
    assert "MAX_HEADER_KB" in body["message"]


def pump(sock: socket.socket, sent: int) -> tuple[int, bool]:
    """One more block of a header that never ends (up to 4 MiB in all), then whether the 431
    has come: the bytes sent so far and that."""
    with suppress(BlockingIOError, ConnectionError):
        if sent < 4 * MIB:
            sent += sock.send(b"a" * 65536)
    with suppress(BlockingIOError, ConnectionError):
        return sent, sock.recv(64).startswith(b"HTTP/1.1 431")
    return sent, False


def test_a_header_that_never_ends_gets_431_at_the_cap_and_holds_no_memory(limited) -> None:
    """40 connections keep sending one header (up to 4 MiB each, never its end): each is answered
    431 while it is still sending (none would be, were the header read until it ended), and the
    server's memory does not grow with the 160 MiB sent."""
    pid = limited.process.pid
    before, peak = rss(pid), 0
    sent: dict[socket.socket, int] = {}
    answered: set[socket.socket] = set()
    with ExitStack() as stack:
        for _ in range(40):
            sock = stack.enter_context(open_socket(limited))
            sock.sendall(HEAD + b"X-Endless: ")
            sock.setblocking(False)
            sent[sock] = 0
        deadline = time.monotonic() + 120
        while len(answered) < len(sent) and time.monotonic() < deadline:
            for sock in sent.keys() - answered:
                sent[sock], refused = pump(sock, sent[sock])
                if refused:
                    answered.add(sock)
            peak = max(peak, rss(pid))
    assert len(answered) == len(sent), f"{len(answered)} of {len(sent)} answered 431"
    assert peak - before < 64 * MIB, f"server RSS grew {(peak - before) / MIB:.0f} MiB"


def test_headers_that_stop_arriving_get_408_after_the_header_timeout(limited) -> None:
    with open_socket(limited) as sock:
        sock.sendall(HEAD)  # and never the blank line that ends the headers
        started = time.monotonic()
        status, body = answer(sock)
    waited = time.monotonic() - started
    assert status == 408 and "HEADER_TIMEOUT_S" in body["message"], body
    assert HEADER_TIMEOUT_S * 0.9 <= waited < 10 * HEADER_TIMEOUT_S, waited


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(limited) -> None:
    with open_socket(limited) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""
    assert time.monotonic() - started < 10 * HEADER_TIMEOUT_S


def socket_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"


def test_connections_past_max_connections_get_503_until_some_close(limited) -> None:
    """MAX_CONNECTIONS speech sockets (which stay open) fill the server: the next connection is
    answered 503 at once; once they close, requests are served again."""
    key = {"Authorization": f"Bearer {KEY}"}
    with ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(connect(socket_url(limited), additional_headers=key))
        with open_socket(limited) as sock:
            sock.sendall(HEAD + b"\r\n")
            status, body = answer(sock)
    assert status == 503 and body["error"] == "too_many_connections", body
    assert "MAX_CONNECTIONS" in body["message"]
    with open_socket(limited) as sock:
        sock.sendall(HEAD + b"\r\n")
        assert answer(sock)[0] == 200


def test_a_refused_socket_handshake_is_no_server_error_in_the_log(limited) -> None:
    for _ in range(3):
        with pytest.raises(InvalidStatus) as refused:
            connect(socket_url(limited), open_timeout=30)
        assert refused.value.response.status_code == 401
    log = limited.log()
    assert '"WebSocket /v1/audio/speech/stream" 401' in log
    assert "without completing handshake" not in log and "ERROR" not in log, log[-2000:]
