"""The voice library: reference audio, transcript, cached reference codes and metadata on disk.

Each voice is a folder ``VOICES_DIR/<id>/`` holding ``reference.wav`` (mono float32, 44.1 kHz),
``codes.pt``, ``meta.json`` and, when it has one, its pronunciation list ``pronunciations.yaml``.
A voice is written into a temporary folder and renamed into place, so a crash never leaves a
half-written voice, and ids are checked against a strict pattern so none can name a path outside
the library. A full disk is a 507 and a library that cannot be written (read-only, no permission)
a 503, naming the library; the temporary files of the failed write are removed.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

from engine.audio_io import SAMPLE_RATE
from engine.errors import ConfigError
from engine.text import Pronunciations, check_entries
from serving.errors import (
    BrokenVoiceFile,
    Conflict,
    InvalidInput,
    LibraryFull,
    LibraryReadOnly,
    NotFound,
)
from serving.schemas import VoiceInfo

log = logging.getLogger(__name__)

VOICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
AUDIO_FILE, CODES_FILE, META_FILE = "reference.wav", "codes.pt", "meta.json"
PRONUNCIATIONS_FILE = "pronunciations.yaml"  # the voice's own written: spoken entries
# The largest pronunciation file read: a full list (MAX_ENTRIES entries of at most MAX_ENTRY_CHARS
# characters a side) is well under it, and anything bigger is refused before it is parsed.
MAX_PRONUNCIATIONS_BYTES = 2**20
_TMP_PREFIX, _TRASH_PREFIX = ".tmp-", ".trash-"
LOCK_FILE = ".lock"  # flock()ed by every writer, in this process and in other replicas
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def check_voice_id(voice_id: str) -> str:
    """The id if it is a safe folder name: letters, digits, ``_ . -``, no ``..``, at most 64."""
    if not VOICE_ID.fullmatch(voice_id or "") or ".." in voice_id:
        raise InvalidInput(
            f"invalid voice id {voice_id!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return voice_id


def _scratch_name(prefix: str) -> str:
    """A unique folder name owned by this process: ``<prefix><pid>-<random>``."""
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex}"


def _writer_alive(suffix: str) -> bool:
    """Whether the process named in a scratch folder's ``<pid>-<random>`` suffix still runs."""
    pid, _, _ = suffix.partition("-")
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _writing(root: Path, action: str) -> Iterator[None]:
    """Disk failures while changing the library as what they are for the client: a 507 when it
    is full, a 503 when it cannot be written (the service is fine; its storage is not)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            log.warning("voice library %s is full: could not %s (%s)", root, action, exc)
            raise LibraryFull(
                f"the voice library (VOICES_DIR) is full: could not {action}; nothing was saved"
            ) from exc
        if exc.errno in _NOT_WRITABLE:
            log.warning("voice library %s cannot be written: could not %s (%s)", root, action, exc)
            raise LibraryReadOnly(
                f"the voice library (VOICES_DIR) cannot be written ({exc.strerror}): could not "
                f"{action}; nothing was changed"
            ) from exc
        raise


def _bytes_of(write: Callable[[io.BytesIO], object]) -> bytes:
    """What ``write`` writes, made in memory: writing that to disk is then plain file I/O whose
    failures carry their errno (libsndfile's say only "System error")."""
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Voice:
    """A saved voice, loaded for synthesis."""

    info: VoiceInfo
    audio: np.ndarray
    codes: torch.Tensor | None
    pronunciations: Pronunciations = field(default_factory=Pronunciations)


_FileStamp = tuple[int, int, int]  # (inode, mtime_ns, size): any rewrite of the file changes it


def _read_pronunciations(path: Path, source: str) -> Pronunciations:
    """The list in ``path``, parsed and checked; a ConfigError (naming ``source``) for a file
    over MAX_PRONUNCIATIONS_BYTES, unreadable, malformed, or with entries ``check_entries``
    refuses. At most the cap plus one byte is ever read."""
    with path.open("rb") as handle:
        data = handle.read(MAX_PRONUNCIATIONS_BYTES + 1)
    if len(data) > MAX_PRONUNCIATIONS_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_PRONUNCIATIONS_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc})") from exc
    return Pronunciations.parse(text, source)


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole through a temporary file beside it, which a failed write removes."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        if tmp.exists():
            tmp.unlink()
        raise


class VoiceLibrary:
    """CRUD over the voice folders. Writers are serialised by a thread lock plus an ``flock`` on
    ``.lock`` in the folder, so replicas sharing one library (on local disk or NFS with locking)
    see each create and delete whole, and two creating the same id get one 409."""

    def __init__(self, root: Path, sample_rate: int = SAMPLE_RATE) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self._lock = threading.Lock()
        # voice id -> (the file's stamp, its parsed list or why it is unusable): a file is parsed
        # once per version, not on every request that uses the voice.
        self._listed: dict[str, tuple[_FileStamp, Pronunciations | ConfigError]] = {}
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Delete what a killed process left half-written or half-deleted (``.tmp-*``,
        ``.trash-*``). Names carry the writer's pid, so a live process sharing the library (a
        second replica) keeps its in-flight folders."""
        leftovers = sorted(
            path
            for prefix in (_TMP_PREFIX, _TRASH_PREFIX)
            for path in self.root.glob(f"{prefix}*")
            if not _writer_alive(path.name.removeprefix(prefix))
        )
        if not leftovers:
            return
        size = sum(f.stat().st_size for d in leftovers for f in d.rglob("*") if f.is_file())
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        log.warning(
            "removed %d unfinished voice folder(s) (%d bytes) from %s, left by an interrupted "
            "write or delete: %s",
            len(leftovers),
            size,
            self.root,
            ", ".join(path.name for path in leftovers),
        )

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock, (self.root / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _folder(self, voice_id: str) -> Path:
        return self.root / check_voice_id(voice_id)

    def exists(self, voice_id: str) -> bool:
        return (
            VOICE_ID.fullmatch(voice_id or "") is not None
            and (self._folder(voice_id) / META_FILE).is_file()
        )

    def list(self) -> list[VoiceInfo]:
        voices = []
        for meta in sorted(self.root.glob(f"*/{META_FILE}")):
            if meta.parent.name.startswith("."):
                continue  # a voice being written or deleted
            try:
                voices.append(VoiceInfo.model_validate_json(meta.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable voice %s: %s", meta.parent.name, exc)
        return voices

    def get(self, voice_id: str) -> Voice:
        folder = self._folder(voice_id)
        if not (folder / META_FILE).is_file():
            raise NotFound(f"unknown voice {voice_id!r}; GET /voices lists the saved ones")
        info = VoiceInfo.model_validate_json((folder / META_FILE).read_text(encoding="utf-8"))
        audio, _ = sf.read(folder / AUDIO_FILE, dtype="float32")
        codes_path = folder / CODES_FILE
        codes = torch.load(codes_path, weights_only=True) if codes_path.is_file() else None
        return Voice(info, audio, codes, self.pronunciations(voice_id))

    def pronunciations(self, voice_id: str) -> Pronunciations:
        """The voice's pronunciation list (empty when it has none); a 409 naming the voice and
        the file when the file on disk is unusable (edited by hand, or written by other tools)."""
        folder = self._folder(voice_id)
        if not (folder / META_FILE).is_file():
            raise NotFound(f"unknown voice {voice_id!r}; GET /voices lists the saved ones")
        path = folder / PRONUNCIATIONS_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            return Pronunciations()
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._listed.get(voice_id)
        if cached is None or cached[0] != stamp:
            source = f"{voice_id}/{PRONUNCIATIONS_FILE} in VOICES_DIR"
            try:
                listed: Pronunciations | ConfigError = _read_pronunciations(path, source)
            except ConfigError as exc:
                log.warning("voice %s: unusable pronunciation list: %s", voice_id, exc)
                listed = exc
            except OSError as exc:
                listed = ConfigError(f"{source}: cannot be read ({exc.strerror})")
            cached = self._listed[voice_id] = (stamp, listed)
        if isinstance(cached[1], ConfigError):
            raise BrokenVoiceFile(
                f"voice {voice_id!r} has an unusable pronunciation list: {cached[1]}; fix the "
                f"file, or replace it with PUT /voices/{voice_id}/pronunciations (DELETE removes "
                "it)"
            )
        return cached[1]

    def set_pronunciations(self, voice_id: str, entries: dict[str, str]) -> Pronunciations:
        """Replace the voice's list (an empty one removes the file); written whole, atomically."""
        try:
            listed = Pronunciations(check_entries(entries, f"voice {voice_id!r}"))
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from exc
        folder = self._folder(voice_id)
        with _writing(self.root, f"change voice {voice_id!r}'s pronunciations"), self._exclusive():
            if not (folder / META_FILE).is_file():
                raise NotFound(f"unknown voice {voice_id!r}; GET /voices lists the saved ones")
            if not listed.entries:
                (folder / PRONUNCIATIONS_FILE).unlink(missing_ok=True)
                return listed
            _replace(
                folder / PRONUNCIATIONS_FILE, yaml.safe_dump(listed.entries, allow_unicode=True)
            )
        log.info("voice %s: %d pronunciation entries", voice_id, len(listed.entries))
        return listed

    def ensure_new(self, voice_id: str) -> None:
        if self._folder(voice_id).exists():
            raise Conflict(f"voice {voice_id!r} already exists; DELETE /voices/{voice_id} first")

    def create(
        self,
        voice_id: str,
        name: str | None,
        transcript: str,
        source: str,
        audio: np.ndarray,
        codes: torch.Tensor,
    ) -> VoiceInfo:
        """Write a new voice atomically; an existing id is a conflict (delete it first)."""
        folder = self._folder(voice_id)
        info = VoiceInfo(
            id=voice_id,
            name=name or voice_id,
            transcript=transcript,
            transcript_source=source,
            duration_s=round(len(audio) / self.sample_rate, 3),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        wav = _bytes_of(lambda f: sf.write(f, audio, self.sample_rate, "FLOAT", format="WAV"))
        tmp = self.root / _scratch_name(_TMP_PREFIX)
        with _writing(self.root, f"save voice {voice_id!r}"):
            tmp.mkdir()
            try:
                (tmp / AUDIO_FILE).write_bytes(wav)
                (tmp / CODES_FILE).write_bytes(_bytes_of(lambda f: torch.save(codes.cpu(), f)))
                (tmp / META_FILE).write_text(info.model_dump_json(indent=2), encoding="utf-8")
                with self._exclusive():
                    self.ensure_new(voice_id)
                    tmp.rename(folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("saved voice %s (%.1f s)", voice_id, info.duration_s)
        return info

    def delete(self, voice_id: str) -> None:
        """Move the folder aside (atomic), then remove it."""
        folder = self._folder(voice_id)
        trash = self.root / _scratch_name(_TRASH_PREFIX)
        with _writing(self.root, f"delete voice {voice_id!r}"), self._exclusive():
            if not (folder / META_FILE).is_file():
                raise NotFound(f"unknown voice {voice_id!r}")
            folder.rename(trash)
        self._listed.pop(voice_id, None)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("deleted voice %s", voice_id)
