"""Whether faster is still faithful: fidelity reports, WER with Whisper, the Piper reference
voice."""
