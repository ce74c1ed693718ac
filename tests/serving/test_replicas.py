"""Two service replicas behind a real HAProxy (``python -m serving.replicas``) on the tiny
checkpoint, with an API key: a shared voice library, streaming through the balancer, clients told
apart by their own addresses (which only the balancer may name), a replica killed with SIGKILL
taken out and back in, Prometheus counters that add up across replicas, and per-source limits
that keep one client's slow or many connections and requests from taking the balancer offline."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

pytestmark = [pytest.mark.service, pytest.mark.slow]

STARTUP_TIMEOUT_S = 240.0
KEY = "replicas-test-key"
ENV = {
    "MAX_NEW_TOKENS": "16",
    "QUEUE_SIZE": "4",
    "LOG_LEVEL": "INFO",
    "WARMUP": "false",
    "API_KEY": KEY,
    "AUTH_FAILURES_PER_MINUTE": "10",
}
# Requests with the key; httpx's module functions' default timeout unless a call gives one.
api = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
LONG_TEXT = " ".join(
    f"Sentence {i} is long enough to be a text chunk of its own, so that the request as a whole "
    "takes many engine calls and is still running when its replica is killed."
    for i in range(12)
)


@dataclass
class Cluster:
    url: str
    stats_url: str
    replicas: dict[str, str]  # name -> url
    process: subprocess.Popen[bytes]
    log_path: Path

    def status(self) -> dict[str, str]:
        """HAProxy's view of each replica: UP, DOWN, or a transition such as "DOWN 1/2"."""
        rows = csv.DictReader(io.StringIO(httpx.get(f"{self.stats_url};csv").text.lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["svname"] in self.replicas}

    def pid(self, name: str) -> int:
        """The replica process serving ``name``'s port (the launcher sets PORT per replica)."""
        port = self.replicas[name].rsplit(":", 1)[1]
        children = psutil.Process(self.process.pid).children()
        return next(c.pid for c in children if c.environ().get("PORT") == port)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    port, stats_port, base = _free_ports(3)  # the replicas take base and base + 1
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in {"API_KEY", "PORT", "HOST", "TRUSTED_PROXIES"}
        },
        **ENV,
        "MODEL_DIR": str(tiny_checkpoint),
        "VOICES_DIR": str(root / "voices"),
        "PROFILE_PATH": str(root / "none.yaml"),
    }
    log_path = root / "replicas.log"
    command = [
        sys.executable,
        "-m",
        "serving.replicas",
        "--replicas",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-port",
        str(base),
        "--stats-port",
        str(stats_port),
        "--state-dir",
        str(root / "state"),
    ]
    with log_path.open("wb") as sink:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=sink, stderr=sink)
    live = Cluster(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{stats_port}/stats",
        {"r1": f"http://127.0.0.1:{base}", "r2": f"http://127.0.0.1:{base + 1}"},
        process,
        log_path,
    )
    try:
        wait_for(
            lambda: set(live.status().values()) == {"UP"}, STARTUP_TIMEOUT_S, "both UP", log_path
        )
        yield live
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_voice_saved_through_one_replica_is_listed_and_used_through_the_other(
    cluster: Cluster, spoken_wav: bytes
) -> None:
    saved = api.post(
        f"{cluster.replicas['r1']}/voices",
        data={"voice_id": "shared", "name": "Shared", "transcript": "A shared voice."},
        files={"audio": ("ref.wav", spoken_wav, "audio/wav")},
        timeout=120,
    )
    assert saved.status_code in (200, 201), saved.text
    listed = api.get(f"{cluster.replicas['r2']}/voices", timeout=30).json()
    assert "shared" in json.dumps(listed)
    spoken = api.post(
        f"{cluster.replicas['r2']}/tts",
        data={"text": "Through the other replica.", "voice_id": "shared", "seed": "1"},
        timeout=120,
    )
    assert spoken.status_code == 200 and spoken.content[:4] == b"RIFF"


def test_two_replicas_creating_one_id_at_once_give_one_voice_and_one_409(
    cluster: Cluster, spoken_wav: bytes
) -> None:
    results: dict[str, int] = {}

    def create(name: str) -> None:
        response = api.post(
            f"{cluster.replicas[name]}/voices",
            data={"voice_id": "raced", "transcript": "Raced."},
            files={"audio": ("ref.wav", spoken_wav, "audio/wav")},
            timeout=120,
        )
        results[name] = response.status_code

    threads = [threading.Thread(target=create, args=(name,)) for name in cluster.replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values())[-1] == 409 and sorted(results.values())[0] in (200, 201)


def test_streaming_passes_through_the_balancer_as_raw_audio_and_sse(cluster: Cluster) -> None:
    body = {"input": "Streamed through HAProxy.", "voice": "default", "seed": 2}
    with api.stream(
        "POST", f"{cluster.url}/v1/audio/speech", json=body | {"response_format": "pcm"}
    ) as raw:
        assert raw.status_code == 200 and raw.headers["x-replica"] in cluster.replicas
        pieces = [piece for piece in raw.iter_bytes() if piece]
    assert sum(map(len, pieces)) > 0
    events = []
    with api.stream(
        "POST", f"{cluster.url}/v1/audio/speech", json=body | {"stream_format": "sse"}
    ) as sse:
        assert sse.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in sse.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert (
        deltas
        and base64.b64decode(deltas[0]["audio"])
        and events[-1]["type"] == ("speech.audio.done")
    )


def from_address(address: str) -> httpx.Client:
    """A client whose connections leave from ``address`` (any 127.x.y.z is this machine)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_one_address_spraying_wrong_keys_locks_out_itself_not_the_others(
    cluster: Cluster,
) -> None:
    """Through the balancer, each replica sees the client's own address (X-Forwarded-For, which
    a client cannot forge): 127.0.0.2's thirty wrong keys get it 429s (the right key too, new
    to it: no oracle for a guesser), while 127.0.0.1's right key passes on both replicas and its
    own wrong key is a plain 401."""
    with from_address("127.0.0.2") as sprayer:
        sprayed = [
            sprayer.get(
                f"{cluster.url}/emotions",
                # a new address each time, if the balancer let a client name its own
                headers={
                    "Authorization": f"Bearer guess-{i}",
                    "X-Forwarded-For": f"198.51.100.{i}",
                },
            )
            for i in range(30)
        ]
        right_from_sprayer = sprayer.get(f"{cluster.url}/emotions", headers=api.headers)
    statuses = [answer.status_code for answer in sprayed]
    assert set(statuses) == {401, 429} and statuses[:10] == [401] * 10, statuses
    assert right_from_sprayer.status_code == 429, "the guesser finds no 200"
    with from_address("127.0.0.1") as neighbour:
        served = {
            neighbour.get(f"{cluster.url}/emotions", headers=api.headers).headers["x-replica"]
            for _ in range(6)
        }
        typo = neighbour.get(f"{cluster.url}/emotions", headers={"Authorization": "Bearer typo"})
    assert served == set(cluster.replicas), "both replicas let the right key in"
    assert typo.status_code == 401, typo.text


def _scrape(url: str) -> dict[str, float]:
    """Counter and histogram-count samples of one replica, by name and labels."""
    text = api.get(f"{url}/metrics/prometheus", timeout=30).text
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in ("fishbench_requests_total", "fishbench_latency_seconds_count")
    }


def _summed(cluster: Cluster) -> dict[str, float]:
    totals: dict[str, float] = {}
    for url in cluster.replicas.values():
        for key, value in _scrape(url).items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def test_prometheus_counters_and_histograms_add_up_across_replicas(cluster: Cluster) -> None:
    ok = "fishbench_requests_total[('outcome', 'ok'), ('route', 'tts')]"
    count = "fishbench_latency_seconds_count[('route', 'tts')]"
    before = _summed(cluster)
    served = set()
    for i in range(6):
        response = api.post(f"{cluster.url}/tts", data={"text": f"Request {i}."}, timeout=120)
        assert response.status_code == 200
        served.add(response.headers["x-replica"])
    after = _summed(cluster)
    assert served == set(cluster.replicas)  # both took requests
    assert after[ok] - before[ok] == 6
    assert after[count] - before[count] == 6  # one histogram observation per request, summed


def test_a_replica_killed_with_sigkill_is_taken_out_and_back_in(cluster: Cluster) -> None:
    """The request in flight is a speech socket through the balancer: it stays open for as long
    as its client has not sent ``end``, so the kill lands while it is in flight by construction
    (an HTTP request could end first). It is cut off at once (closed without a close frame: no
    ``done``), new requests keep succeeding, and the replica is taken out, restarted and taken
    back in."""
    url = cluster.url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        busy = ws.response.headers["X-Replica"]
        assert busy in cluster.replicas
        ws.send(json.dumps({"type": "text", "text": "Spoken on one replica. And then"}))
        events = []
        while not events or events[-1]["type"] != "audio_done":  # the replica is serving it
            if isinstance(message := ws.recv(60), str):
                events.append(json.loads(message))
        os.kill(cluster.pid(busy), signal.SIGKILL)
        with pytest.raises(ConnectionClosedError):  # abnormal: no close frame, no done
            while True:
                ws.recv(60)  # a TimeoutError here: the cut never reached the client

    for i in range(4):  # new requests keep succeeding, on the other replica
        response = api.post(f"{cluster.url}/tts", data={"text": f"After {i}."}, timeout=120)
        assert response.status_code == 200
    wait_for(
        lambda: cluster.status()[busy].startswith("DOWN"), 30, f"{busy} DOWN", cluster.log_path
    )
    wait_for(
        lambda: cluster.status()[busy] == "UP",
        STARTUP_TIMEOUT_S,
        f"{busy} back UP",
        cluster.log_path,
    )
    assert "restart 1" in cluster.log_path.read_text()


def _balancer(cluster: Cluster) -> tuple[str, int]:
    address = urlsplit(cluster.url)
    return address.hostname or "127.0.0.1", address.port or 80


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def _slow_connection(source: str, balancer: tuple[str, int]) -> socket.socket | None:
    """A connection that starts a request and never finishes its headers; None when the
    balancer refused it (closed or reset at once)."""
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(balancer)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        return sock
    except OSError:
        sock.close()
        return None


def test_one_source_holding_slow_connections_cannot_take_the_balancer_offline(
    cluster: Cluster,
) -> None:
    """1,100 connections from one address that never finish a request (more than the old
    `maxconn 1024`): the balancer holds at most its per-source share, and /health through it
    still answers another client at once."""
    _raise_open_files(4096)
    balancer = _balancer(cluster)
    held: list[socket.socket] = []
    try:
        for _ in range(1100):
            sock = _slow_connection("127.0.0.5", balancer)
            if sock is not None:
                held.append(sock)
        health = httpx.get(f"{cluster.url}/health", timeout=10)
        assert health.status_code == 200, health.text
    finally:
        for sock in held:
            sock.close()


def test_a_request_whose_headers_stall_is_dropped_within_ten_seconds(cluster: Cluster) -> None:
    """`timeout http-request 10s` (30 s before): HAProxy answers 408 and closes."""
    sock = _slow_connection("127.0.0.6", _balancer(cluster))
    assert sock is not None
    with sock:
        sock.settimeout(60)
        started = time.monotonic()
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and waited < 20, (waited, answer[:200])


def test_one_source_is_limited_to_300_requests_in_ten_seconds(cluster: Cluster) -> None:
    """Requests from one address (cheap ones: 401s) over one keep-alive connection: past 300
    in 10 s the balancer answers 429 itself, in the service's error body."""
    with from_address("127.0.0.7") as client:
        answers = [client.get(f"{cluster.url}/emotions") for _ in range(400)]
    statuses = [answer.status_code for answer in answers]
    assert 429 in statuses, "never limited"
    first = statuses.index(429)
    assert first >= 300 and set(statuses[:first]) == {401}, statuses
    limited = answers[first]
    assert limited.json()["error"] == "rate_limited" and limited.headers["retry-after"] == "10"


def test_a_replica_believes_x_forwarded_for_only_from_the_balancer(cluster: Cluster) -> None:
    """A local process that reaches a replica's port directly, even from the balancer's own
    address, cannot name a new client address per wrong key: without the balancer's secret the
    replica counts them all against the connection's address, which is then throttled."""
    replica = cluster.replicas["r1"]
    assert api.get(f"{replica}/emotions").status_code == 200  # this key works from here
    forged = [
        api.get(
            f"{replica}/emotions",
            headers={
                "Authorization": f"Bearer forged-{i}",
                "X-Forwarded-For": f"203.0.113.{i}",
                "X-Proxy-Secret": f"guess-{i}",
            },
        ).status_code
        for i in range(30)
    ]
    assert set(forged) == {401, 429} and forged[-10:] == [429] * 10, forged
    assert api.get(f"{replica}/emotions").status_code == 200, "the key that worked still does"
