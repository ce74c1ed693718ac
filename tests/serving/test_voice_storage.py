"""A voice library whose disk is full, then read-only: every write is a 507 or a 503 naming the
library, no temporary file is left, and the saved voice stays usable.

The server runs in its own mount namespace (``unshare``) with VOICES_DIR on a 4 MiB tmpfs: a
real file system that really fills up (ENOSPC) and is really remounted read-only (EROFS). The
test sees that tmpfs through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

UNSHARE = ("unshare", "--user", "--map-root-user", "--mount")
TMPFS = 'mount -t tmpfs -o size=4m tmpfs "$VOICES_DIR" && exec "$@"'


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=60, check=False)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(
        not _namespaces_work(), reason="unprivileged user and mount namespaces are not available"
    ),
]


class Library:
    """The live server and its voice library as the server sees it."""

    def __init__(self, server, voices: Path) -> None:
        self.server = server
        self.voices = voices
        self.view = Path(f"/proc/{server.process.pid}/root{voices}")

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.view.rglob(".tmp-*"))

    def fill(self) -> Path:
        """Write a file until the tmpfs is full."""
        filler = self.view / "filler"
        block = b"\0" * 65536
        with filler.open("wb", buffering=0) as sink:
            try:
                while True:
                    sink.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        return filler

    def remount_read_only(self) -> None:
        pid = str(self.server.process.pid)
        subprocess.run(
            ["nsenter", "-t", pid, "-U", "-m", "mount", "-o", "remount,ro", str(self.voices)],
            check=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, ready_server, spoken_wav: bytes
) -> Iterator[Library]:
    root = tmp_path_factory.mktemp("storage")
    voices = root / "voices"
    voices.mkdir()
    wrapper = (*UNSHARE, "sh", "-c", TMPFS, "sh")
    server = ready_server(root, tiny_checkpoint, voices, wrapper, WARMUP="false")
    with server.client() as http:
        files = {"audio": ("v.wav", spoken_wav, "audio/wav")}
        kept = http.post("/voices", data={"voice_id": "kept", "transcript": "Hi."}, files=files)
        assert kept.status_code == 201, kept.text
    yield Library(server, voices)
    server.stop()


def assert_refused(response: httpx.Response, status: int, error: str, clue: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and "voice library (VOICES_DIR)" in body["message"], body
    assert clue in body["message"], body


def assert_kept_is_usable(http: httpx.Client) -> None:
    assert http.get("/voices/kept").status_code == 200
    spoken = http.post("/tts", data={"text": "Still here.", "voice_id": "kept", "seed": "1"})
    assert spoken.status_code == 200 and spoken.content[:4] == b"RIFF"


def test_a_full_disk_is_a_507_and_leaves_no_temporary_file(
    library: Library, spoken_wav: bytes
) -> None:
    filler = library.fill()
    try:
        with library.server.client() as http:
            data = {"voice_id": "more", "transcript": "Hi."}
            files = {"audio": ("v.wav", spoken_wav, "audio/wav")}
            added = http.post("/voices", data=data, files=files)
            assert_refused(added, 507, "voice_library_full", "is full")
            listed = http.put("/voices/kept/pronunciations", json={"entries": {"SQL": "sequel"}})
            assert_refused(listed, 507, "voice_library_full", "is full")
            assert library.leftovers() == []
            assert http.get("/voices/more").status_code == 404
            assert http.get("/voices/kept/pronunciations").json() == {"entries": {}}
            assert_kept_is_usable(http)
    finally:
        filler.unlink()


def test_a_read_only_library_is_a_503_for_every_write(library: Library, spoken_wav: bytes) -> None:
    library.remount_read_only()
    with library.server.client() as http:
        files = {"audio": ("v.wav", spoken_wav, "audio/wav")}
        added = http.post("/voices", data={"voice_id": "more", "transcript": "Hi."}, files=files)
        listed = http.put("/voices/kept/pronunciations", json={"entries": {"SQL": "sequel"}})
        deleted = http.delete("/voices/kept")
        for answer in (added, listed, deleted):
            assert_refused(answer, 503, "voice_library_read_only", "cannot be written")
        assert library.leftovers() == []
        assert_kept_is_usable(http)
