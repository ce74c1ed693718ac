"""What the engine is measured against: upstream's own generation loop, the baseline every
speed-up is a ratio to (``baseline``); teacher-forced agreement and codec SNR against an fp32 run,
the fidelity gates (``fidelity``); and the bytes a frame must read, which a speed is set against
(``perf_model``)."""
