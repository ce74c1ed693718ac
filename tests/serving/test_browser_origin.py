"""A default install (no API_KEY, no CORS_ORIGINS) against web pages of other origins: a page in
headless Chromium cannot delete a voice, create one or use the model; the refusal (403) comes
from the headers alone; the service's own pages and the origins in CORS_ORIGINS still work."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings

pytestmark = pytest.mark.service

CHROMIUM = Path("/usr/bin/chromium")
ATTACK = """async ([api, wav]) => {
    const said = {};
    try {
        said.delete = (await fetch(api + "/voices/victim", {method: "DELETE"})).status;
    } catch (error) { said.delete = String(error); }
    const voice = new FormData();
    voice.append("voice_id", "planted");
    voice.append("transcript", "Planted.");
    const bytes = Uint8Array.from(atob(wav), (c) => c.charCodeAt(0));
    voice.append("audio", new Blob([bytes], {type: "audio/wav"}), "v.wav");
    const speech = new FormData();
    speech.append("text", "Using the model from another origin.");
    for (const [path, body] of [["/voices", voice], ["/tts", speech]]) {
        // no-cors: sent without a preflight, the answer unreadable; what counts is the server
        await fetch(api + path, {method: "POST", body, mode: "no-cors"}).catch(() => null);
    }
    return said;
}"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_origin() -> Iterator[str]:
    """A web page on another port of this machine: another origin than the service's."""
    page = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{page.server_address[1]}"
    page.shutdown()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
def test_a_page_of_another_origin_cannot_delete_create_or_speak(
    server, client: httpx.Client, other_origin: str, spoken_wav: bytes
) -> None:
    from playwright.sync_api import sync_playwright

    files = {"audio": ("v.wav", spoken_wav, "audio/wav")}
    saved = client.post("/voices", data={"voice_id": "victim", "transcript": "Hi."}, files=files)
    assert saved.status_code == 201, saved.text
    requests_before = client.get("/metrics").json()["requests"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(other_origin)
            said = page.evaluate(ATTACK, [server.url, base64.b64encode(spoken_wav).decode()])
        finally:
            browser.close()
    assert "Failed to fetch" in str(said["delete"]), said  # the preflight was refused
    assert client.get("/voices/victim").status_code == 200, "the voice is still there"
    assert client.get("/voices/planted").status_code == 404, "no voice was planted"
    assert client.get("/metrics").json()["requests"] == requests_before, "the model was not used"


def test_a_cross_origin_preflight_is_not_allowed(client: httpx.Client, other_origin: str) -> None:
    preflight = client.options(
        "/voices/x",
        headers={"Origin": other_origin, "Access-Control-Request-Method": "DELETE"},
    )
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    assert preflight.status_code == 403 and preflight.json()["error"] == "foreign_origin"


def test_a_foreign_origin_is_refused_before_the_body_is_read(server, other_origin: str) -> None:
    """Only the headers are sent (a 10 MB upload declared): the 403 cannot wait for the body."""
    address = urlsplit(server.url)
    head = (
        f"POST /voices HTTP/1.1\r\nHost: {address.netloc}\r\nOrigin: {other_origin}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 10000000\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert status_line.split()[1] == b"403" and body["error"] == "foreign_origin", answer
    assert "CORS_ORIGINS" in body["message"] and other_origin in body["message"]


def test_own_pages_listed_origins_and_non_browser_clients_pass() -> None:
    """In-process (no lifespan: an unknown path shows what the guard let through, as a 404)."""
    app = TestClient(
        create_app(Settings(_env_file=None, cors_origins=["http://ui.example"])),
        base_url="http://service.example",
    )
    listed = {"Origin": "http://ui.example"}
    preflight = app.options("/tts", headers={**listed, "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "http://ui.example"
    assert app.post("/nope", headers=listed).status_code == 404
    assert app.post("/nope", headers={"Origin": "http://service.example"}).status_code == 404
    assert app.post("/nope").status_code == 404  # no Origin: not a web page
    refused = app.post("/nope", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403 and refused.json()["error"] == "foreign_origin"
    assert app.post("/nope", headers={"Origin": "null"}).status_code == 403
    keyed = TestClient(create_app(Settings(_env_file=None, api_key="k")))
    assert keyed.post("/nope", headers={"Origin": "http://evil.example"}).status_code == 401
