"""``fishbench gpu-check`` (and ``python -m harness.gpu_check`` where only an interpreter is at
hand): run one part, or all, and write each part's report.

Exit 0 when every step ran (or was skipped with a reason), 1 when a step failed, 2 when the real
run finds no usable GPU, 3 when a Python package the steps import is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
from pathlib import Path

from harness.gpu_check.plan import PARTS, Plan
from harness.reports import BENCH_DIR

log = logging.getLogger("gpu-check")

# Third-party modules the steps import (a dry run's sys.modules), as import names: the first
# line of output names any that this interpreter lacks.
REQUIRED_MODULES = (
    "torch",
    "torchaudio",
    "torchao",
    "numpy",
    "yaml",
    "tiktoken",
    "psutil",
    "pynvml",
    "fish_speech",
    "dac",
    "audiotools",
    "hydra",
    "omegaconf",
    "pydantic",
    "soundfile",
    "librosa",
    "julius",
    "loguru",
    "argbind",
    "flatten_dict",
    "randomname",
    "loralib",
)
EXIT_FAILED, EXIT_REFUSED, EXIT_MISSING = 1, 2, 3
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` this interpreter cannot import (looked up, not imported)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parts = ", ".join(f"{n}: {title}" for n, (title, *_) in PARTS.items())
    parser.add_argument(
        "--part",
        default="all",
        choices=["all", *map(str, PARTS)],
        help=f"one part ({parts}), or all in turn",
    )
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU, tiny sizes")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR)
    parser.add_argument("--checkpoint", type=Path, help="default: the s1-mini / tiny synthetic one")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="compile cache shared by the parts (default .cache/gpu-check/compile-cache)",
    )
    parser.add_argument("--budget-s", type=float, help="seconds per part (default 450 on GPU)")


def run(args: argparse.Namespace) -> int:
    from engine.preflight import PreflightError
    from harness.gpu_check.report import write_reports
    from harness.gpu_check.steps import check_part

    missing = missing_modules(REQUIRED_MODULES)
    if missing:
        print(
            f"gpu-check: missing Python packages for {', '.join(missing)}: run it from the "
            "project environment (make setup) or carry their wheels (docs/measuring.md)",
            file=sys.stderr,
        )
        return EXIT_MISSING
    parts = list(PARTS) if args.part == "all" else [int(args.part)]
    failed = False
    for part in parts:
        plan = Plan.for_run(
            args.dry_run, args.out_dir, args.checkpoint, args.budget_s, args.cache_dir
        )
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        file_log = logging.FileHandler(plan.work_dir / "check.log")
        file_log.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(file_log)
        try:
            result = check_part(plan, part)
            report = write_reports(result)
            shutil.copyfile(plan.work_dir / "check.log", report.with_suffix(".log"))
        except PreflightError as exc:
            print(f"gpu-check: error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            logging.getLogger().removeHandler(file_log)
            file_log.close()
            shutil.rmtree(plan.work_dir, ignore_errors=True)
        print(report.read_text())
        print(f"wrote {report}")
        failed |= any(s.status not in ("ok", "skipped") for s in result.steps)
    return EXIT_FAILED if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
