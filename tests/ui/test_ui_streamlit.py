"""The Streamlit app through ``streamlit.testing.v1.AppTest``, against the live service."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "ui" / "streamlit_app.py"

pytestmark = pytest.mark.ui


def run_app() -> AppTest:
    """The app after its first run; ``API_URL`` has been set by the test."""
    return AppTest.from_file(str(APP), default_timeout=120).run()


def test_controls_render(use_service: str) -> None:
    app = run_app()
    assert not app.exception
    assert {w.label for w in app.text_area} == {"Text", "Reference transcript"}
    assert {w.label for w in app.selectbox} >= {
        "Insert an emotion marker",
        "…or a saved voice",
        "Language",
    }
    assert [w.label for w in app.slider] == ["Temperature", "Top-p", "Speed"]
    assert [w.label for w in app.number_input] == ["Seed (-1 = random)"]
    assert [w.label for w in app.toggle] == ["Optimize for memory (low-VRAM variant)"]
    assert app.sidebar.text_input[0].value == use_service
    assert ": cpu · " in app.sidebar.markdown[0].value
    assert "Synthetic weights" in app.warning[0].value  # the tiny checkpoint speaks noise
    assert "(excited)" in app.selectbox(key="marker").options


def test_marker_insertion_and_synthesis_round_trip(use_service: str) -> None:
    app = run_app()
    app.text_area(key="text").input("Hello from Streamlit.")
    app.selectbox(key="marker").select("(excited)").run()
    assert app.text_area(key="text").value == "Hello from Streamlit. (excited) "

    app.number_input(key="seed").set_value(3)
    app.button(key="synthesize").click().run(timeout=120)
    assert not app.exception and not app.error
    (audio,) = app.get("audio")
    assert audio.proto.url  # the player has a file behind it
    (download,) = app.download_button
    assert download.label == "Download audio"
    metrics = [html.proto.body for html in app.get("html") if "fb-metrics" in html.proto.body]
    assert metrics and " ms" in metrics[0]


def test_save_a_voice_and_select_it(use_service: str, reference_wav: Path) -> None:
    app = run_app()
    app.file_uploader(key="reference").upload("ref.wav", reference_wav.read_bytes(), "audio/wav")
    app.text_input(key="voice_name").input("Streamlit Voice")
    app.text_area(key="reference_text").input("A short test tone.")
    app.button(key="save_voice").click().run(timeout=120)
    assert not app.exception and not app.error
    assert any("Saved voice" in message.value for message in app.success)
    assert app.selectbox(key="voice_id").value == "streamlit-voice"


def test_down_service_shows_an_error_not_a_traceback(
    down_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_URL", down_url)
    app = run_app()
    assert not app.exception
    assert any("not reachable" in error.value for error in app.error)
    app.text_area(key="text").input("Hello.")
    app.button(key="synthesize").click().run()
    assert not app.exception
    assert any("not reachable" in error.value for error in app.error)
