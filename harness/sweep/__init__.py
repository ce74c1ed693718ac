"""The sweep, in the order its data flows: config -> compose -> grid -> trials -> store/tracking
-> selection -> export and report. ``python -m harness.sweep`` runs ``runner.main``."""
