"""Service layer: the engine worker, voices, metrics, audio encoding and text splitting."""
