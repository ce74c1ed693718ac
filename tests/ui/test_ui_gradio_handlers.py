"""The Gradio page's handler functions against the live service on the tiny checkpoint."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import pytest

from ui import gradio_app

pytestmark = pytest.mark.ui

REFERENCE_TRANSCRIPT = "A short test tone standing in for a voice."
DEFAULTS = {"language": "", "temperature": 0.8, "top_p": 0.8, "speed": 1.0, "seed": 1}


def run_synthesis(
    text: str, reference: Path | None = None, voice_id: str | None = None, **overrides
):
    """All ``(audio, metrics, message, word timings)`` outputs of one synthesis, in order."""
    settings = {**DEFAULTS, **overrides}
    return list(
        gradio_app.synthesize(
            text,
            None if reference is None else str(reference),
            voice_id,
            REFERENCE_TRANSCRIPT if reference else "",
            settings["language"],
            settings["temperature"],
            settings["top_p"],
            settings["speed"],
            settings["seed"],
            False,
            settings.get("as_written", False),
            settings.get("timings", False),
        )
    )


def audio_seconds(outputs) -> float:
    """Total duration of the WAV audio the handler produced (streamed pieces or one file)."""
    total = 0.0
    for audio, *_ in outputs:
        if isinstance(audio, bytes):
            with wave.open(io.BytesIO(audio)) as reader:
                total += reader.getnframes() / reader.getframerate()
    return total


def test_status_shows_profile_and_cpu_limits(use_service: str) -> None:
    status, metrics = gradio_app.load_status()
    assert "Profile" in status and ": cpu · " in status
    assert "GPU utilization: unavailable" in status
    assert 'class="fb-banner"' in status and "Synthetic weights" in status  # tiny checkpoint
    assert "Latency" in metrics and "n/a (CPU)" in metrics


def test_synthesize_streams_playable_audio(use_service: str) -> None:
    outputs = run_synthesis("Hello from the tiny checkpoint.")
    assert [message for _, _, message, _ in outputs if message] == []
    assert audio_seconds(outputs) > 0
    final_metrics = outputs[-1][1]
    assert "ms" in final_metrics  # latency and time to first audio were measured


def test_without_ffmpeg_the_whole_file_arrives_with_service_figures(
    use_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gradio_app, "STREAMING", False)
    (output,) = run_synthesis("Hello without streaming.")
    audio, metrics, message, words = output
    assert audio[:4] == b"RIFF" and message == "" and words == ""  # no timings asked
    assert audio_seconds([output]) > 0 and " ms" in metrics


def test_emotion_markers_come_from_the_service(use_service: str) -> None:
    markers = [value for _, value in gradio_app.refresh_emotions().choices]
    assert "(excited)" in markers
    assert gradio_app.add_marker("Hello", "(excited)") == ("Hello (excited) ", None)


def test_save_list_and_use_a_voice(use_service: str, reference_wav: Path) -> None:
    dropdown, message = gradio_app.save_voice(
        str(reference_wav), "Test Voice", REFERENCE_TRANSCRIPT
    )
    assert "Saved voice" in message
    assert ("Test Voice", "test-voice") in dropdown.choices and dropdown.value == "test-voice"

    listed, _ = gradio_app.refresh_voices()
    assert "test-voice" in [value for _, value in listed.choices]

    outputs = run_synthesis("Cloned.", voice_id="test-voice")
    assert audio_seconds(outputs) > 0


def test_spoken_form_preview_and_a_voices_pronunciations(
    use_service: str, reference_wav: Path
) -> None:
    assert gradio_app.preview_spoken("Room 12.", None, False) == "Room twelve."
    assert gradio_app.preview_spoken("Room 12.", None, True) == "Room 12."
    gradio_app.save_voice(str(reference_wav), "Lister", REFERENCE_TRANSCRIPT)
    assert gradio_app.load_pronunciations("lister") == ""
    shown, message = gradio_app.save_pronunciations("lister", "Room: chamber\n")
    assert shown == "Room: chamber\n" and "Saved 1 pronunciation" in message
    assert gradio_app.load_pronunciations("lister") == "Room: chamber\n"
    assert gradio_app.preview_spoken("Room 12.", "lister", False) == "chamber twelve."
    _, refused = gradio_app.save_pronunciations("lister", "- not a mapping")
    assert "not saved" in refused
    assert run_synthesis("Room 12.", voice_id="lister", as_written=True)[-1][2] == ""


def test_word_timings_come_as_a_whole_file_with_the_reason_there_are_none(
    use_service: str,
) -> None:
    outputs = run_synthesis("Two words.", timings=True)
    assert len(outputs) == 1 and isinstance(outputs[0][0], bytes)  # one file, not a stream
    assert "No word timings: unavailable: synthetic checkpoint" in outputs[0][3]


def test_synthesize_with_an_uploaded_reference(use_service: str, reference_wav: Path) -> None:
    outputs = run_synthesis("Uploaded.", reference=reference_wav)
    assert [message for _, _, message, _ in outputs if message] == []
    assert audio_seconds(outputs) > 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"temperature": 5.0}, "temperature"), ({"voice_id": "no-such-voice"}, "unknown voice")],
)
def test_service_refusal_becomes_a_message(
    use_service: str, overrides: dict, expected: str
) -> None:
    outputs = run_synthesis("Hello.", **overrides)
    audio, _, message, _ = outputs[-1]
    assert not isinstance(audio, bytes)
    assert "refused the request" in message and expected in message


def test_service_down_is_a_message(down_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_URL", down_url)
    status, _ = gradio_app.load_status()
    assert "not reachable" in status
    dropdown, message = gradio_app.refresh_voices()
    assert dropdown.choices == [] and "not reachable" in message
    *_, (audio, _, message, _) = run_synthesis("Hello.")
    assert not isinstance(audio, bytes) and "not reachable" in message
