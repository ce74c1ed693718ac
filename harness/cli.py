"""The ``fishbench`` command line: make and check checkpoints, synthesize, normalise text, measure
fidelity, bench, sweep."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, UserError
from harness.bench.concurrency import concurrency_level
from harness.gpu_check import cli as gpu_check
from harness.reports import BENCH_DIR, COMPARE_DIR
from harness.sweep import run as sweep_command

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."


def _make_checkpoint(args: argparse.Namespace) -> int:
    from engine.model.synthetic import make_checkpoint

    folder = make_checkpoint(args.preset, args.out_dir, seed=args.seed)
    print(f"wrote synthetic {args.preset} checkpoint to {folder.path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from engine.model.checkpoint_report import check_checkpoint, to_text

    print(to_text(check_checkpoint(args.checkpoint_dir)))
    return 0


def _load_profile(path: str | None):
    from engine.profile import EngineProfile

    return EngineProfile.from_env(EngineProfile.load(path) if path else None)


def _synth(args: argparse.Namespace) -> int:
    from engine.audio_io import write_wav
    from engine.engine import OptimizedFishSpeech

    engine = OptimizedFishSpeech.from_checkpoint(args.checkpoint, _load_profile(args.profile))
    options = {
        name: getattr(args, name)
        for name in ("max_new_tokens", "fixed_frames", "temperature", "top_p", "seed")
        if getattr(args, name) is not None
    }
    audio = engine.synthesize(args.text, args.reference, args.reference_text, **options)
    write_wav(args.output, audio, engine.sample_rate)
    report = engine.last_report
    print(
        f"wrote {args.output}: {report.audio_s:.2f} s of audio, "
        f"{report.frames} frames in {report.total_s:.2f} s"
    )
    return 0


def _normalize(args: argparse.Namespace) -> int:
    from engine.text import Pronunciations, SpokenForm

    listed = Pronunciations.load(args.pronunciations) if args.pronunciations else None
    print(SpokenForm(listed)(args.text, normalize=not args.no_normalize))
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    if args.spread or args.output or len(args.profile or []) > 1:
        return _fidelity_report(args)
    from engine.measure.fidelity import gate_failures, measure_fidelity

    figures = measure_fidelity(
        args.checkpoint,
        _load_profile(args.profile[0] if args.profile else None),
        args.text,
        args.reference,
        args.reference_text,
        args.frames,
    )
    failures = gate_failures(figures)
    for failure in failures:
        logging.getLogger("fishbench").warning("gate failed: %s", failure)
    print(json.dumps({**figures, "passes_gates": not failures}))
    return 0


def _fidelity_report(args: argparse.Namespace) -> int:
    from harness.quality.fidelity_report import run_fidelity, spread, to_markdown, write_fidelity

    if args.reference:
        raise ConfigError("--reference applies to a single --profile")
    profiles = spread() if args.spread else {}
    profiles |= {Path(path).stem: _load_profile(path) for path in args.profile or []}
    meta, rows = run_fidelity(
        args.checkpoint,
        profiles,
        args.frames,
        args.text,
        on_row=lambda row: print(json.dumps(row), flush=True),
    )
    if args.output:
        path = write_fidelity(meta, rows, args.output)
        logging.getLogger("fishbench").info("wrote %s", path)
    print(to_markdown(meta, rows), file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.concurrency:
        from harness.bench.concurrency import run_concurrency_bench

        run_concurrency_bench(
            args.checkpoint, args.concurrency, args.frames, args.repeats, args.out_dir,
            args.reference, args.rows,
        )  # fmt: skip
        return 0
    from harness.bench.run import run_bench

    run_bench(args.checkpoint, args.frames, args.repeats, args.out_dir, args.reference, args.rows)
    return 0


def _profile_ops(args: argparse.Namespace) -> int:
    from harness.bench.op_profile import profile_ops, to_markdown, write_profile

    knobs = {
        "precision": args.precision,
        "quantization": args.quantization,
        "compile_decode": args.compile_decode,
    }
    flags = {key: value for key, value in knobs.items() if value is not None}
    if args.upstream and (args.profile or flags):
        raise ConfigError("--upstream runs upstream as it is; it takes no profile or profile flags")
    if args.profile and flags:
        raise ConfigError("give --profile or --precision/--quantization/--compile-decode, not both")
    if flags:  # explicit flags, not env overrides, say what is profiled
        from engine.profile import EngineProfile

        profile = EngineProfile(**flags)
    else:
        profile = None if args.upstream else _load_profile(args.profile)
    result = profile_ops(
        args.checkpoint,
        profile,
        upstream=args.upstream,
        frames=args.frames,
        top=args.top,
        text=args.text,
        name=Path(args.profile).stem if args.profile else None,
    )
    if args.output:
        logging.getLogger("fishbench").info("wrote %s", write_profile(result, args.output))
    print(to_markdown(result))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from harness.compare import run

    return run(args)


def _add_model_commands(sub: Any) -> None:
    """make-checkpoint, check, synth and normalize: a checkpoint and what it says."""
    p = sub.add_parser(
        "make-checkpoint", help="write a synthetic checkpoint in the released format"
    )
    p.add_argument("--preset", choices=["tiny", "s1-mini"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(func=_make_checkpoint)

    p = sub.add_parser(
        "check", help="validate a checkpoint folder without running it and say what it holds"
    )
    p.add_argument("checkpoint_dir", type=Path)
    p.set_defaults(func=_check)

    p = sub.add_parser("synth", help="synthesize one text to a 44.1 kHz WAV")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--reference", help="reference recording (wav, flac, mp3, ogg)")
    p.add_argument("--reference-text", help="transcript of the reference recording")
    p.add_argument("--profile", help="profile YAML (default: built-in defaults + env overrides)")
    p.add_argument("--fixed-frames", type=int, help="ignore end-of-speech; exactly N frames")
    p.add_argument("--max-new-tokens", type=int, help="frame budget (default: the engine's)")
    p.add_argument("--temperature", type=float, help="(default: the engine's)")
    p.add_argument("--top-p", type=float, help="(default: the engine's)")
    p.add_argument("--seed", type=int)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "normalize", help="print the spoken form of a text (numbers, dates, money as words)"
    )
    p.add_argument("text")
    p.add_argument("--pronunciations", type=Path, help="a YAML list of written: spoken entries")
    p.add_argument("--no-normalize", action="store_true", help="apply only the pronunciations")
    p.set_defaults(func=_normalize)


def _add_measuring_commands(sub: Any) -> None:
    """fidelity, bench, profile-ops and gpu-check: what a profile costs and keeps."""
    p = sub.add_parser(
        "fidelity", help="teacher-forced agreement and codec SNR of a profile vs fp32"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--profile", action="append", help="profile YAML (repeat to compare several at once)"
    )
    p.add_argument(
        "--spread", action="store_true", help="add bf16, int8, int4, nf4 and fp32 int8 profiles"
    )
    p.add_argument(
        "-o", "--output", type=Path, help="write JSON + Markdown here (e.g. reports/fidelity)"
    )
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--reference")
    p.add_argument("--reference-text")
    p.add_argument("--frames", type=int, default=32)
    p.set_defaults(func=_fidelity)

    p = sub.add_parser("bench", help="upstream vs our profiles, one process per row")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference", help="reference recording (default: 10 s generated speech)")
    p.add_argument("--rows", nargs="*", help="subset of row names")
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR)
    p.add_argument(
        "--concurrency",
        nargs="+",
        type=concurrency_level,
        metavar="C",
        help="instead of the rows: C requests at once on one engine, per C (1 to 8); "
        "--repeats timed rounds each, --rows picks engine rows (default: the first)",
    )
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "profile-ops", help="top ops by self time per frame of one warmed-up synthesis"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--profile", help="profile YAML (default: built-in defaults + env overrides)")
    p.add_argument("--precision", help="auto, bf16, fp16 or fp32 (instead of --profile)")
    p.add_argument("--quantization", help="none, int8, int4 or nf4 (instead of --profile)")
    p.add_argument("--compile-decode", help="none, default, reduce-overhead or max-autotune")
    p.add_argument("--upstream", action="store_true", help="profile the upstream baseline")
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--top", type=int, default=20, help="rows in the table")
    p.add_argument("-o", "--output", type=Path, help="also write Markdown + JSON here")
    p.set_defaults(func=_profile_ops)

    p = sub.add_parser(
        "gpu-check", help="what a GPU must show, in parts of under 8 minutes (--dry-run: CPU)"
    )
    gpu_check.add_arguments(p)
    p.set_defaults(func=gpu_check.run)


def _add_sweep_commands(sub: Any) -> None:
    """sweep and compare: finding the profile, and comparing machines."""
    p = sub.add_parser("sweep", help="Hydra sweep; overrides the Hydra way (key=value)")
    sweep_command.add_arguments(p)
    p.set_defaults(func=sweep_command.run)

    p = sub.add_parser(
        "compare", help="each hardware's champion vs its baseline, from an MLflow store"
    )
    p.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else mlflow.db)"
    )
    p.add_argument("--experiment", default="fishbench-sweep")
    p.add_argument("-o", "--out-dir", type=Path, default=COMPARE_DIR)
    p.set_defaults(func=_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fishbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_add_model_commands, _add_measuring_commands, _add_sweep_commands):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        print(f"fishbench {args.command}: error: {message}", file=sys.stderr)
        return 2


def _user_error(exc: Exception) -> str | None:
    """One line for an error the user can fix (bad input, profile, env override, machine);
    None for anything else (a bug), which keeps its traceback."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from engine.profile import describe_validation_error

        return describe_validation_error(exc)
    if isinstance(exc, (UserError, OSError, *_preflight_errors())):
        lines = (line.strip() for line in str(exc).splitlines())
        return " ".join(line for line in lines if line) or type(exc).__name__
    return None


def _preflight_errors() -> tuple[type[Exception], ...]:
    try:
        from engine.preflight import PreflightError
    except ImportError:
        return ()
    return (PreflightError,)


if __name__ == "__main__":
    sys.exit(main())
