"""``fishbench bench`` and ``fishbench profile-ops``: upstream against our profiles on one
checkpoint, and where a frame's time goes.

``rows`` holds the rows and a bench's fixed inputs, ``run`` measures each row in its own child
process through the trial's measuring code (``harness.trial.measure``: the same load, warm-up,
repeat and summary as a sweep trial), ``report`` writes the table, ``op_profile`` the per-op
profile, ``concurrency`` times requests at once on one batching engine (``--concurrency``).
"""
