"""The parts of a GPU check, their steps and bench rows, and the sizes of a GPU and a dry run.

Every estimate below is a projection for one H100/H200 (no GPU has run these parts yet): a
cold compiled bench row is load ~10 s + compile 60-90 s + four timed runs of 128 frames ~4 s; a
warm one skips most of the compile. Each part keeps under 8 minutes with its start-up.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

# (name, steps, bench rows, projected minutes on an H100 with its arithmetic)
PARTS: dict[int, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    1: (
        "kernels, fidelity and upstream eager",
        ("environment", "checkpoint", "sdpa", "fidelity", "bench"),
        ("upstream-eager",),
        "checkpoint 40 s (once) + SDPA 5 s + fidelity (fp32, bf16, int8 compiled) ~150 s "
        "+ upstream eager ~50 s: ~4.5 min",
    ),
    2: (
        "bf16 compiled against upstream --compile, and as RTX 30/40 cards attend",
        ("environment", "checkpoint", "bench"),
        ("upstream-eager", "upstream-compile", "ours-bf16-compiled", "ours-bf16-mem-efficient"),
        "upstream eager 50 s + upstream --compile ~75 s + two cold bf16 rows 2 x ~100 s: ~5.5 min",
    ),
    3: (
        "int8 and int4, and first audio with a saved voice",
        ("environment", "checkpoint", "bench", "ttfa"),
        ("upstream-eager", "ours-int8", "ours-int4"),
        "upstream eager 50 s + two cold quantized rows 2 x ~100 s + TTFA from the int8 row's "
        "cache ~35 s: ~5 min",
    ),
    4: (
        "start-up over every KV bucket and the default request",
        ("environment", "checkpoint", "warmup", "default-request"),
        (),
        "load 10 s + warm-up of 5 KV buckets (2,048 warm from part 3, four cold at 0.5-1.5 min) "
        "and 10 codec lengths (~10 s each): ~6 min",
    ),
    5: (
        "8 GB and 12 GB cards: VRAM budgets emulated",
        ("environment", "checkpoint", "vram-budgets"),
        (),
        "two engines (7 GB, 11 GB), each load 10 s + warm-up from part 4's cache ~60 s + one "
        "request: ~3 min",
    ),
}
VRAM_BUDGETS_GB = (7.0, 11.0)  # what an 8 GB and a 12 GB card leave a process (desktop, driver)


# The sizes of a GPU run and of the dry run. A 45 s voice is 969 codec frames; with the texts the
# prompt is ~1,000 tokens, so 128 fixed frames (or the 1,024-frame budget) decode in the 2,048
# bucket. The dry run is as small as still goes through every step.
SIZES: dict[bool, dict[str, object]] = {
    False: {
        "preset": "s1-mini",
        "budget_s": 450.0,
        "frames": 128,
        "repeats": 3,
        "reference_s": 45.0,
        "fidelity_frames": 64,
        "kv_len": 2048,
        "ttfa_requests": 4,
    },
    True: {
        "preset": "tiny",
        "budget_s": 900.0,
        "frames": 2,
        "repeats": 1,
        "reference_s": 1.0,
        "fidelity_frames": 2,
        "kv_len": 256,
        "ttfa_requests": 2,
    },
}


@dataclass(frozen=True)
class Plan:
    """Sizes of one check (``SIZES``) and where it keeps what the next part reuses."""

    dry_run: bool
    out_dir: Path
    checkpoint: Path
    compile_cache: Path
    work_dir: Path
    preset: str
    budget_s: float
    frames: int
    repeats: int
    reference_s: float
    fidelity_frames: int
    kv_len: int
    ttfa_requests: int

    @classmethod
    def for_run(
        cls,
        dry_run: bool,
        out_dir: Path,
        checkpoint: Path | None,
        budget_s: float | None,
        cache_dir: Path | None,
    ) -> Plan:
        """The dry run's checkpoint and cache live in its temporary folder unless given; the GPU
        run's persist under ``checkpoints/`` and ``.cache/`` for the next part."""
        work = Path(tempfile.mkdtemp(prefix="gpu-check-dry-" if dry_run else "gpu-check-"))
        sizes = SIZES[dry_run] | ({"budget_s": budget_s} if budget_s else {})
        if dry_run:
            checkpoint = checkpoint or work / "tiny-synthetic"
            cache_dir = cache_dir or work / "compile-cache"
        return cls(
            dry_run=dry_run,
            out_dir=out_dir,
            checkpoint=checkpoint or Path("checkpoints/s1-mini-synthetic"),
            compile_cache=cache_dir or Path(".cache/gpu-check/compile-cache"),
            work_dir=work,
            **sizes,
        )

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"
