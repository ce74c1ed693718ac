"""The fishbench Streamlit app: the same controls, player and metrics as the Gradio page.

Run ``streamlit run ui/streamlit_app.py``; the service URL starts from ``API_URL`` and can be
changed in the sidebar.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from ui import view
from ui.client import Figures, ServiceClient, ServiceError, SynthesisRequest, api_url

AUDIO_TYPES = ["wav", "mp3", "flac", "ogg", "m4a"]
T = TypeVar("T")
LANGUAGE_NAMES = {code: name for name, code in view.LANGUAGES}


def sidebar() -> tuple[ServiceClient, dict[str, Any]]:
    """Service URL, active profile and unavailable features; returns the client and health."""
    with st.sidebar:
        st.text_input("Service URL", value=api_url(), key="api_url")
        client = ServiceClient(st.session_state.api_url)
        try:
            health = client.health()
        except ServiceError as error:
            st.error(str(error))
            return client, {}
        st.markdown(view.profile_line(health))
        if notes := view.unavailable_features(health):
            st.html(view.notes_html(notes))
        st.button("Refresh", key="refresh")
    return client, health


def text_controls(client: ServiceClient) -> None:
    """The text box and the emotion-marker picker that appends to it."""
    st.text_area("Text", key="text", height=120, placeholder="What should the voice say?")
    st.selectbox(
        "Insert an emotion marker",
        _or_empty(client.emotions),
        index=None,
        key="marker",
        on_change=_insert_marker,
    )


def voice_controls(client: ServiceClient) -> None:
    """Reference upload or saved voice, "save this voice", and the reference transcript."""
    left, right = st.columns(2)
    left.file_uploader("Reference recording", type=AUDIO_TYPES, key="reference")
    labels = {voice_id: label for label, voice_id in view.voice_choices(_or_empty(client.voices))}
    right.selectbox(
        "…or a saved voice",
        list(labels),
        index=None,
        key="voice_id",
        format_func=lambda voice_id: labels.get(voice_id, voice_id),
    )
    right.text_input("Name for this voice", key="voice_name")
    right.button("Save this voice", key="save_voice", on_click=save_voice, args=(client,))
    _notice(right, "voice_notice")
    st.text_area("Reference transcript", key="reference_text", height=68)


def sampling_controls(health: dict[str, Any]) -> None:
    """Language, seed, temperature / top-p / speed sliders (ranges and defaults from the
    service's ``/health``; left out while it has not answered) and the memory toggle."""
    left, right = st.columns(2)
    left.selectbox("Language", list(LANGUAGE_NAMES), key="language", format_func=LANGUAGE_NAMES.get)
    right.number_input("Seed (-1 = random)", min_value=-1, value=-1, step=1, key="seed")
    for column, (name, label) in zip(
        st.columns(len(view.SLIDERS)), view.SLIDERS.items(), strict=True
    ):
        bounds = view.slider_range(health, name)
        if bounds is not None:
            column.slider(label, *bounds, view.SLIDER_STEP, key=name)
    st.toggle("Optimize for memory (low-VRAM variant)", key="optimize_for_memory")


def output(health: dict[str, Any]) -> None:
    """The player, the metrics bar and the download button for the last synthesis."""
    _notice(st, "synthesis_notice")
    result = st.session_state.get("result")
    figures = result.figures if result else Figures()
    if result:
        st.audio(result.audio, format=result.media_type)
    st.html(view.metrics_html(view.metric_cells(figures, health)))
    if result:
        st.download_button(
            "Download audio", result.audio, file_name="fishbench.wav", mime=result.media_type
        )


def synthesize(client: ServiceClient) -> None:
    """Button callback: send the form to ``POST /tts`` and keep the result or the error."""
    state = st.session_state
    state.result, state.synthesis_notice = None, None
    if not state.text.strip():
        state.synthesis_notice = ("error", "Type some text to speak.")
        return
    with _upload_path(state.reference) as reference:
        request = SynthesisRequest(
            text=state.text,
            reference_audio=reference,
            reference_text=state.reference_text.strip(),
            voice_id="" if reference else state.voice_id or "",
            language=state.language,
            temperature=state.get("temperature"),
            top_p=state.get("top_p"),
            speed=state.get("speed"),
            seed=None if state.seed < 0 else int(state.seed),
            optimize_for_memory=state.optimize_for_memory,
        )
        try:
            state.result = client.synthesize(request)
        except ServiceError as error:
            state.synthesis_notice = ("error", str(error))


def save_voice(client: ServiceClient) -> None:
    """Button callback: store the uploaded reference in the voice library and select it."""
    state = st.session_state
    if state.reference is None:
        state.voice_notice = ("error", "Upload a reference recording first.")
        return
    with _upload_path(state.reference) as path:
        voice_id = view.voice_id_for(state.voice_name, fallback=path.stem)
        try:
            voice = client.save_voice(
                path, voice_id, state.voice_name.strip(), state.reference_text.strip()
            )
        except ServiceError as error:
            state.voice_notice = ("error", str(error))
            return
    state.voice_id = voice.get("id")
    state.voice_notice = ("success", f"Saved voice “{voice.get('name') or voice.get('id')}”.")


def main() -> None:
    """Lay out the page; Streamlit reruns this on every interaction."""
    st.set_page_config(page_title="fishbench", page_icon=str(view.FAVICON_PATH), layout="centered")
    st.html(view.CSS_PATH)
    client, health = sidebar()
    st.title("fishbench")
    if warning := view.synthetic_warning(health):
        st.warning(warning)
    st.caption("Voice cloning, tuned for your GPU.")
    text_controls(client)
    voice_controls(client)
    sampling_controls(health)
    st.button(
        "Synthesize",
        type="primary",
        key="synthesize",
        width="stretch",
        on_click=synthesize,
        args=(client,),
    )
    output(health)


def _notice(container: Any, key: str) -> None:
    """Show the ``(kind, text)`` message a callback left under ``key``, if any."""
    notice = st.session_state.pop(key, None)
    if notice:
        kind, text = notice
        (container.error if kind == "error" else container.success)(text)


def _insert_marker() -> None:
    state = st.session_state
    state.text = view.insert_marker(state.text, state.marker)
    state.marker = None


def _or_empty(fetch: Callable[[], list[T]]) -> list[T]:
    """``fetch()``, or an empty list when the service cannot answer (the sidebar says why)."""
    try:
        return fetch()
    except ServiceError:
        return []


@contextmanager
def _upload_path(upload: Any) -> Iterator[Path | None]:
    """An uploaded file written to a temporary path for the client, removed afterwards."""
    if upload is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        yield path


main()
