"""Fast checks of the UI's pure parts: stream re-chunking, what the page says, client parsing."""

from __future__ import annotations

import io
import struct
import wave

import httpx
import numpy as np
import pytest

from serving.settings import Settings
from ui import view
from ui.audio import WavChunker, wav_chunks
from ui.client import (
    DEFAULT_API_URL,
    Figures,
    ServiceClient,
    ServiceError,
    SynthesisRequest,
    _refusal,
)

pytestmark = pytest.mark.ui

CPU_HEALTH = {"status": "ready", "device": "cpu", "dtype": "float32", "profile": {"chunk_size": 16}}
GPU_HEALTH = {
    "status": "ready",
    "device": "cuda",
    "device_name": "NVIDIA GeForce RTX 3060",
    "dtype": "bfloat16",
    "compile_decode": "max-autotune",
    "compile_codec": "reduce-overhead",
    "quantization": "nf4",
    "profile": {"num_streams": 2},
    "fallbacks": ["int4_group_size: 256 -> 128 (int4 kernel limit)"],
    "profile_source": "reports/profile.yaml",
    "provenance": {"gpu_name": "NVIDIA GeForce RTX 4060"},
}


def streaming_header(rate: int, tag: int = 1, bits: int = 16) -> bytes:
    """A WAV header with unknown sizes, as the service streams it."""
    block = bits // 8
    fmt = struct.pack("<IHHIIHH", 16, tag, 1, rate, rate * block, block, bits)
    return b"RIFF\xff\xff\xff\xffWAVEfmt " + fmt + b"data\xff\xff\xff\xff"


def frames_of(piece: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(piece)) as reader:
        return reader.getframerate(), reader.getnframes()


def test_chunker_waits_for_the_header_and_whole_samples() -> None:
    chunker = WavChunker()
    body = streaming_header(44_100) + np.arange(5, dtype="<i2").tobytes()
    assert chunker.feed(body[:20]) is None  # header incomplete
    first = chunker.feed(body[20:-1])  # four whole samples and half of the fifth
    assert frames_of(first) == (44_100, 4)
    assert frames_of(chunker.feed(body[-1:])) == (44_100, 1)


def test_float_streams_become_16_bit_files() -> None:
    samples = np.array([0.0, 0.5, -1.0, 2.0], dtype="<f4").tobytes()
    (piece,) = wav_chunks([streaming_header(22_050, tag=3, bits=32) + samples])
    with wave.open(io.BytesIO(piece)) as reader:
        pcm = np.frombuffer(reader.readframes(4), dtype="<i2")
    assert reader.getsampwidth() == 2
    assert pcm.tolist() == [0, 16383, -32767, 32767]


def test_a_non_wav_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="WAV"):
        list(wav_chunks([b"ID3" + b"\x00" * 64]))


def test_profile_line_marks_4_bit_experimental_and_lists_gpu_knobs() -> None:
    line = view.profile_line(GPU_HEALTH)
    assert line.startswith(
        "Profile (reports/profile.yaml, tuned on NVIDIA GeForce RTX 4060): NVIDIA"
    )
    assert "RTX 3060" in line and "bfloat16" in line
    assert "quantization nf4 (experimental)" in line
    assert "compile decode=max-autotune, codec=reduce-overhead" in line
    assert "2 CUDA stream(s)" in line


def test_cpu_service_lists_unavailable_features_with_reasons() -> None:
    assert "eager" not in view.profile_line(CPU_HEALTH)  # compile state unknown: not guessed
    notes = view.unavailable_features(CPU_HEALTH)
    assert any(note.startswith("GPU utilization: unavailable (") for note in notes)
    assert any(note.startswith("CUDA streams: unavailable (") for note in notes)
    cells = dict(view.metric_cells(Figures(latency_ms=1234.0), CPU_HEALTH))
    assert cells == {
        "Latency": "1234 ms",
        "First audio": "n/a",
        "Peak VRAM": "n/a (CPU)",
        "GPU": "n/a (CPU)",
    }


def test_gpu_service_reports_only_its_fallbacks_with_4_bit_labelled() -> None:
    assert view.unavailable_features(GPU_HEALTH) == [
        "Profile fallback: int4_group_size: 256 -> 128 (int4 (experimental) kernel limit)"
    ]


def test_loading_service_says_so() -> None:
    assert view.profile_line({"status": "loading"}).startswith("Service loading")


def test_small_helpers() -> None:
    assert view.insert_marker("Hi  ", "(sad)") == "Hi (sad) "
    assert view.insert_marker("", "(sad)") == "(sad) "
    assert view.voice_id_for("My Voice #2") == "my-voice-2"
    assert view.voice_id_for("  ", fallback="ref.take") == "ref.take"
    assert view.voice_choices([{"id": "a", "name": "Alice"}, {"id": "b"}, {}]) == [
        ("Alice", "a"),
        ("b", "b"),
    ]


def test_figures_from_headers_and_metrics() -> None:
    headers = {"x-latency-ms": "812.5", "x-ttfa-ms": "n/a", "x-peak-vram-mb": "1024"}
    figures = Figures.from_headers(headers)
    assert figures == Figures(latency_ms=812.5, peak_vram_mb=1024.0)
    rolling = Figures.from_metrics({"ttfa_ms": {"p50": 90.0}, "last": {"gpu_util_pct": 55}})
    assert figures.filled_from(rolling) == Figures(812.5, 90.0, 1024.0, 55.0)


def test_request_form_leaves_out_unset_fields() -> None:
    form = SynthesisRequest("Hi", seed=None, optimize_for_memory=True).form(stream=True)
    assert form["optimize_for_memory"] == "true" and form["stream"] == "true"
    assert "seed" not in form and "voice_id" not in form


def test_sliders_take_the_service_ranges_and_skip_an_excluded_minimum() -> None:
    controls = {
        "temperature": {"default": 0.8, "minimum": 0.0, "maximum": 2.0, "exclusive_minimum": True},
        "speed": {"default": 1.0, "minimum": 0.25, "maximum": 4.0, "exclusive_minimum": False},
    }
    health = {"limits": {"controls": controls}}
    assert view.slider_range(health, "temperature") == (view.SLIDER_STEP, 2.0, 0.8)
    assert view.slider_range(health, "speed") == (0.25, 4.0, 1.0)
    assert view.slider_range({}, "temperature") is None  # no answer yet: no slider to guess


def test_the_default_service_address_is_the_services_own_default() -> None:
    defaults = Settings.model_fields
    host, port = defaults["host"].default, defaults["port"].default
    assert f"http://{host}:{port}" == DEFAULT_API_URL


def test_error_body_becomes_the_message() -> None:
    body = {"error": "invalid_input", "message": "text is empty", "type": "invalid_request_error"}
    error = _refusal(httpx.Response(422, json=body))
    assert str(error) == "The service refused the request (422): text is empty"
    assert error.status == 422


def test_unreachable_service_is_a_service_error() -> None:
    with pytest.raises(ServiceError, match="not reachable at http://127.0.0.1:9"):
        ServiceClient("http://127.0.0.1:9").voices()


def test_synthetic_weights_get_a_banner_real_ones_none() -> None:
    text = view.synthetic_warning(
        {**CPU_HEALTH, "synthetic_checkpoint": True, "checkpoint": "ck/tiny"}
    )
    assert text is not None and "ck/tiny" in text and "noise" in text
    assert 'role="alert"' in view.banner_html(text)
    assert view.synthetic_warning({**CPU_HEALTH, "synthetic_checkpoint": False}) is None
    assert view.banner_html(None) == ""


def test_word_timings_render_as_a_table_or_say_why_not() -> None:
    words = [{"word": "Hi<", "start": 0.0, "end": 0.25, "aligned": True}]
    table = view.words_html(words, "faster-whisper tiny.en")
    assert "<td>Hi&lt;</td><td>0.00</td><td>0.25</td>" in table
    assert "No word timings: unavailable" in view.words_html(
        [], "unavailable: synthetic checkpoint"
    )
    assert view.words_html([], "") == ""
