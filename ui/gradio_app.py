"""The default fishbench web page: one column of controls over the REST service.

Run ``python ui/gradio_app.py`` (service URL from ``API_URL``, port from ``GRADIO_SERVER_PORT``).
The handlers are plain module-level functions over simple values, so tests call them directly.
"""

from __future__ import annotations

import html
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import yaml

from ui.audio import wav_chunks
from ui.client import Figures, ServiceClient, ServiceError, SynthesisRequest, api_url
from ui.view import (
    CSS_PATH,
    FAVICON_PATH,
    LANGUAGES,
    SLIDER_STEP,
    SLIDERS,
    banner_html,
    insert_marker,
    metric_cells,
    metrics_html,
    notes_html,
    profile_line,
    slider_range,
    synthetic_warning,
    unavailable_features,
    voice_choices,
    voice_id_for,
    words_html,
)

STREAMING = shutil.which("ffmpeg") is not None
NO_STREAMING_NOTE = "Playback while the audio streams in: unavailable (ffmpeg is not on PATH)"
TAGLINE = '<span class="fb-tagline">voice cloning, tuned for your GPU</span>'
PLACEHOLDER = "What should the voice say? Emotion markers such as (excited) go before a phrase."
TOGGLE_THEME_JS = "() => { document.body.classList.toggle('dark'); }"

# (audio, metrics bar, message); a dict is gr.skip(), which leaves that output as it is
Outputs = tuple[bytes | dict | None, str | dict, str, str | dict]


def load_status() -> tuple[str, str]:
    """The profile line with the unavailable-feature notes, and the rolling metrics bar."""
    client = ServiceClient()
    try:
        health = client.health()
    except ServiceError as error:
        return _error(str(error)), metrics_html(metric_cells(Figures(), {}))
    notes = unavailable_features(health) + ([] if STREAMING else [NO_STREAMING_NOTE])
    status = (
        banner_html(synthetic_warning(health))
        + f'<p class="fb-profile">{html.escape(profile_line(health))}</p>{notes_html(notes)}'
    )
    return status, _metrics_bar(client, Figures(), health)


def load_sliders() -> list[dict]:
    """Each slider's range and default as the service validates them; left disabled until then."""
    try:
        health = ServiceClient().health()
    except ServiceError:
        return [gr.skip() for _ in SLIDERS]
    updates = []
    for name in SLIDERS:
        bounds = slider_range(health, name)
        updates.append(
            gr.skip()
            if bounds is None
            else gr.update(minimum=bounds[0], maximum=bounds[1], value=bounds[2], interactive=True)
        )
    return updates


def refresh_voices(selected: str | None = None) -> tuple[gr.Dropdown, str]:
    """The saved-voice picker filled from ``/voices`` and a message if that failed."""
    try:
        choices = voice_choices(ServiceClient().voices())
    except ServiceError as error:
        return gr.Dropdown(choices=[], value=None), _error(str(error))
    value = selected if selected in {voice_id for _, voice_id in choices} else None
    return gr.Dropdown(choices=choices, value=value), ""


def refresh_emotions() -> gr.Dropdown:
    """The emotion-marker picker filled from ``/emotions`` (empty if the service is down)."""
    try:
        markers = ServiceClient().emotions()
    except ServiceError:
        markers = []
    return gr.Dropdown(choices=markers, value=None)


def add_marker(text: str, marker: str | None) -> tuple[str, None]:
    """Append the chosen emotion marker to the text and clear the picker."""
    return insert_marker(text or "", marker), None


def save_voice(reference: str | None, name: str, transcript: str) -> tuple[gr.Dropdown, str]:
    """Store the uploaded reference in the voice library and select it."""
    if not reference:
        return gr.Dropdown(), _error("Upload a reference recording first.")
    voice_id = voice_id_for(name, fallback=Path(reference).stem)
    try:
        voice = ServiceClient().save_voice(reference, voice_id, name.strip(), transcript.strip())
    except ServiceError as error:
        return gr.Dropdown(), _error(str(error))
    voice_id = str(voice.get("id") or voice_id)
    dropdown, message = refresh_voices(voice_id)
    return dropdown, message or _info(f"Saved voice “{voice.get('name') or voice_id}”.")


def preview_spoken(text: str, voice_id: str | None, as_written: bool) -> str:
    """The spoken form the service would generate for ``text`` (numbers as words, ...)."""
    if not (text or "").strip():
        return ""
    try:
        return ServiceClient().spoken_form(text, voice_id or "", False if as_written else None)
    except ServiceError as error:
        return f"(no preview: {error})"


def load_pronunciations(voice_id: str | None) -> str:
    """The selected voice's pronunciation list as YAML lines (empty for none)."""
    if not voice_id:
        return ""
    try:
        entries = ServiceClient().pronunciations(voice_id)
    except ServiceError as error:
        return f"# {error}"
    return yaml.safe_dump(entries, allow_unicode=True) if entries else ""


def save_pronunciations(voice_id: str | None, listed: str) -> tuple[str, str]:
    """Replace the selected voice's list with the YAML in the box."""
    if not voice_id:
        return gr.skip(), _error("Pick a saved voice first.")
    try:
        entries = yaml.safe_load(listed or "") or {}
        if not isinstance(entries, dict):
            raise ValueError("write one `written: spoken` entry per line")
        saved = ServiceClient().set_pronunciations(voice_id, entries)
    except (ServiceError, ValueError, yaml.YAMLError) as error:
        return gr.skip(), _error(f"Pronunciations not saved: {error}")
    text = yaml.safe_dump(saved, allow_unicode=True) if saved else ""
    return text, _info(f"Saved {len(saved)} pronunciation(s) for “{voice_id}”.")


def synthesize(
    text: str,
    reference: str | None,
    voice_id: str | None,
    reference_text: str,
    language: str,
    temperature: float,
    top_p: float,
    speed: float,
    seed: float,
    optimize_for_memory: bool,
    as_written: bool,
    timings: bool,
) -> Iterator[Outputs]:
    """Yield ``(audio, metrics bar, message, word timings)`` as the audio arrives (the whole file
    at once when word timings are asked for); errors become the message."""
    if not (text or "").strip():
        yield gr.skip(), gr.skip(), _error("Type some text to speak."), gr.skip()
        return
    request = SynthesisRequest(
        text=text,
        reference_audio=reference or None,
        reference_text=(reference_text or "").strip(),
        voice_id="" if reference else voice_id or "",
        language=language or "",
        temperature=_number(temperature),
        top_p=_number(top_p),
        speed=_number(speed),
        seed=None if seed is None or seed < 0 else int(seed),
        optimize_for_memory=bool(optimize_for_memory),
        normalize=False if as_written else None,
        timestamps=bool(timings),
    )
    client = ServiceClient()
    try:
        yield from (_streamed if STREAMING and not timings else _whole)(client, request)
    except (ServiceError, ValueError) as error:
        yield gr.skip(), gr.skip(), _error(str(error)), ""


def _streamed(client: ServiceClient, request: SynthesisRequest) -> Iterator[Outputs]:
    """Stream WAV pieces to the player, then the figures measured here and by the service."""
    started = _now_ms()
    ttfa_ms = None
    for piece in wav_chunks(client.stream(request)):
        ttfa_ms = ttfa_ms if ttfa_ms is not None else _now_ms() - started
        yield piece, gr.skip(), "", ""
    measured = Figures(latency_ms=_now_ms() - started, ttfa_ms=ttfa_ms)
    yield None, _metrics_bar(client, measured), "", ""


def _whole(client: ServiceClient, request: SynthesisRequest) -> Iterator[Outputs]:
    """One non-streaming request: the whole file, with the service's own figures."""
    result = client.synthesize(request)
    captions = words_html(result.words, result.alignment)
    yield result.audio, _metrics_bar(client, result.figures), "", captions


def _metrics_bar(client: ServiceClient, figures: Figures, health: dict | None = None) -> str:
    """``figures`` completed from ``/metrics``, as the metrics bar; service hiccups are ignored."""
    try:
        health = health if health is not None else client.health()
        figures = figures.filled_from(Figures.from_metrics(client.metrics()))
    except ServiceError:
        health = health or {}
    return metrics_html(metric_cells(figures, health))


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def _now_ms() -> float:
    return time.perf_counter() * 1000


def _error(message: str) -> str:
    return f'<span class="fb-error">{html.escape(message)}</span>'


def _info(message: str) -> str:
    return f'<span class="fb-info">{html.escape(message)}</span>'


def build() -> gr.Blocks:
    """The page: header, profile line, controls, player and metrics bar."""
    with gr.Blocks(title="fishbench") as page:
        refresh, theme, status = _header()
        text = gr.Textbox(label="Text", lines=4, placeholder=PLACEHOLDER, elem_id="fb-text")
        marker = gr.Dropdown(label="Insert an emotion marker", choices=[], elem_id="fb-marker")
        reference, voice, voice_name, save = _voice_controls()
        reference_text = gr.Textbox(label="Reference transcript", lines=2, elem_id="fb-ref-text")
        as_written, spoken, pronunciations, save_pronunciation = _spoken_form_controls()
        timings = gr.Checkbox(
            label="Word timings under the player (whole file, no streaming)", elem_id="fb-timings"
        )
        sampling = _sampling_controls()
        go = gr.Button("Synthesize", variant="primary", elem_id="fb-synthesize")
        message = gr.HTML(elem_classes="fb-message", elem_id="fb-message")
        audio = gr.Audio(
            label="Audio", streaming=STREAMING, autoplay=True, interactive=False, elem_id="fb-audio"
        )
        words = gr.HTML(elem_id="fb-words")
        metrics = gr.HTML(metrics_html(metric_cells(Figures(), {})), elem_id="fb-metrics")

        quiet = {"show_progress": "hidden"}
        for event in (page.load, refresh.click):
            event(load_status, outputs=[status, metrics], **quiet)
            event(load_sliders, outputs=sampling[1:4], **quiet)
            event(refresh_voices, inputs=voice, outputs=[voice, message], **quiet)
            event(refresh_emotions, outputs=marker, **quiet)
        theme.click(None, js=TOGGLE_THEME_JS)
        marker.input(add_marker, inputs=[text, marker], outputs=[text, marker], **quiet)
        save.click(save_voice, [reference, voice_name, reference_text], [voice, message])
        for event in (text.blur, voice.change, as_written.change):
            event(preview_spoken, inputs=[text, voice, as_written], outputs=spoken, **quiet)
        voice.change(load_pronunciations, inputs=voice, outputs=pronunciations, **quiet)
        save_pronunciation.click(
            save_pronunciations, inputs=[voice, pronunciations], outputs=[pronunciations, message]
        ).then(preview_spoken, inputs=[text, voice, as_written], outputs=spoken, **quiet)
        go.click(
            synthesize,
            inputs=[text, reference, voice, reference_text, *sampling, as_written, timings],
            outputs=[audio, metrics, message, words],
        )
    return page


def _header() -> tuple[gr.Button, gr.Button, gr.HTML]:
    with gr.Row(elem_classes="fb-header", equal_height=True):
        gr.HTML(f"<h1>fishbench{TAGLINE}</h1>")
        small = {"size": "sm", "scale": 0, "min_width": 96}
        refresh = gr.Button("↻ Refresh", elem_id="fb-refresh", **small)
        theme = gr.Button("◐ Theme", elem_id="fb-theme", **small)
    status = gr.HTML('<p class="fb-profile">Connecting to the service…</p>', elem_id="fb-status")
    return refresh, theme, status


def _voice_controls() -> tuple[gr.Audio, gr.Dropdown, gr.Textbox, gr.Button]:
    with gr.Row(equal_height=True):
        reference = gr.Audio(
            label="Reference recording", sources=["upload"], type="filepath", elem_id="fb-ref"
        )
        with gr.Column():
            voice = gr.Dropdown(label="…or a saved voice", choices=[], elem_id="fb-voice")
            voice_name = gr.Textbox(label="Name for this voice", max_lines=1, elem_id="fb-name")
            save = gr.Button("Save this voice", size="sm", elem_id="fb-save-voice")
    return reference, voice, voice_name, save


def _spoken_form_controls() -> tuple[gr.Checkbox, gr.Textbox, gr.Textbox, gr.Button]:
    """The spoken-form preview, the as-written switch and the voice's pronunciation list."""
    as_written = gr.Checkbox(
        label="Read as written (no number/date normalisation)", elem_id="fb-as-written"
    )
    spoken = gr.Textbox(
        label="Spoken form (what the model is asked to say)",
        lines=2,
        interactive=False,
        elem_id="fb-spoken",
    )
    with gr.Row(equal_height=True):
        pronunciations = gr.Textbox(
            label="This voice's pronunciations (YAML, one `written: spoken` per line)",
            lines=3,
            placeholder="SQL: sequel",
            elem_id="fb-pronunciations",
        )
        save = gr.Button("Save pronunciations", size="sm", scale=0, elem_id="fb-save-pron")
    return as_written, spoken, pronunciations, save


def _sampling_controls() -> list[gr.components.Component]:
    """Language, sliders, seed and memory toggle, in ``synthesize``'s argument order."""
    with gr.Row():
        language = gr.Dropdown(label="Language", choices=LANGUAGES, value="", elem_id="fb-lang")
        seed = gr.Number(label="Seed (-1 = random)", value=-1, precision=0, elem_id="fb-seed")
    with gr.Row():
        plain = {"step": SLIDER_STEP, "buttons": [], "min_width": 140, "interactive": False}
        temperature, top_p, speed = (
            gr.Slider(label=label, elem_id=f"fb-{name.replace('_', '-')}", **plain)
            for name, label in SLIDERS.items()
        )
    optimize = gr.Checkbox(label="Optimize for memory (low-VRAM variant)", elem_id="fb-optimize")
    return [language, temperature, top_p, speed, seed, optimize]


def main() -> None:
    """Serve the page; Gradio reads ``GRADIO_SERVER_PORT`` / ``GRADIO_SERVER_NAME`` itself."""
    print(f"fishbench UI talking to {api_url()}")
    build().launch(
        theme=gr.themes.Default(primary_hue="cyan", neutral_hue="slate"),
        css_paths=[CSS_PATH],
        favicon_path=FAVICON_PATH,
        footer_links=[],
    )


if __name__ == "__main__":
    main()
