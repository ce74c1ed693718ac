"""The sweep's Hydra structured configs, registered in one ConfigStore.

Every group (engine, hardware, scenario, quality, grid) is a dataclass; the YAML files under
``conf/`` only override it. Validation lives in ``__post_init__``, which OmegaConf runs when
``OmegaConf.to_object`` turns the composed config into these classes, so a bad override fails
before any trial starts. The engine group is generated from ``EngineProfile`` so its knobs and
defaults have one source of truth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from hydra.core.config_store import ConfigStore

from engine.errors import ConfigError
from engine.paths import REPORTS_DIR
from engine.profile import EngineProfile
from engine.sampling import SamplingParams

KNOBS: tuple[str, ...] = tuple(name for name in EngineProfile.model_fields if name != "provenance")


def _omegaconf_type(annotation: Any) -> type:
    """OmegaConf has no ``Literal``: the type of its values stands in (``str`` for modes, ``int``
    for group sizes); the profile's validator checks the allowed values instead."""
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    return annotation


def _validate_engine(self: Any) -> None:
    EngineProfile.model_validate(dataclasses.asdict(self))


EngineConf = dataclasses.make_dataclass(
    "EngineConf",
    [
        (name, _omegaconf_type(info.annotation), field(default=info.default))
        for name, info in EngineProfile.model_fields.items()
        if name in KNOBS
    ],
    namespace={
        "__post_init__": _validate_engine,
        "__doc__": "Engine knobs every candidate starts from (the fields of EngineProfile).",
    },
)


@dataclass
class TrialTimesConf:
    """What a trial costs on this hardware before any sweep here has measured it: the sweep's
    estimate uses these on a first run and says so. ``source`` says where the figures come from."""

    compile_cold_s: float = 130.0  # a compiled trial's warm-up when it compiles a graph
    compile_warm_s: float = 20.0  # ... when the compile cache holds every graph it needs
    trial_s: float = 60.0  # the rest of a measured trial: start, load, repeats, fidelity, WER
    screen_s: float = 30.0  # the rest of a screening trial (short scenario, few repeats)
    source: str = "fishbench's generic default, not measured"

    def __post_init__(self) -> None:
        if min(self.compile_cold_s, self.compile_warm_s, self.trial_s, self.screen_s) < 0:
            raise ConfigError("hardware.times figures must be >= 0")


@dataclass
class HardwareConf:
    """A target machine: the VRAM budget gates candidates, the bandwidth gives the roofline."""

    name: str = "cpu"
    device: str = "cpu"
    vram_budget_mb: float | None = None
    bandwidth_gb_s: float | None = None
    match: list[str] = field(default_factory=list)  # GPU-name substrings for auto-detection
    threads: int | None = None  # torch threads on CPU; None = one per logical CPU
    # "8.9": lets ``fishbench sweep --plan`` resolve profiles for this GPU on a machine without it
    compute_capability: str | None = None
    times: TrialTimesConf = field(default_factory=TrialTimesConf)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"hardware.device must be cpu or cuda, not {self.device!r}")
        for key in ("vram_budget_mb", "bandwidth_gb_s"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"hardware.{key} must be positive, got {value}")


@dataclass
class ScenarioConf:
    """Fixed inputs every trial (baseline included) synthesizes, and how often."""

    name: str = "default"
    text: str = (
        "The weather was calm that evening, so we walked along the river and talked about music."
    )
    reference_audio: str | None = "reports/assets/reference.wav"
    reference_text: str = "A gentle breeze drifted over the quiet harbor as the boats came home."
    generate_reference: bool = True  # speak reference_text with Piper when the file is missing
    fixed_frames: int = 64
    warmup_runs: int = 1
    # Timed repeats: at least ``repeats`` (6 is the fewest that give a 95 % interval of the median),
    # then more until the interval is within +-ci_target_pct, max_repeats or max_repeat_s.
    repeats: int = 6
    max_repeats: int = 20
    ci_target_pct: float = 3.0
    max_repeat_s: float = 120.0
    fidelity_frames: int = 32
    # A candidate with max_batch > 1 then streams max_batch requests at once: one untimed round,
    # then this many timed ones (harness.trial.measure).
    concurrent_rounds: int = 3
    seed: int = 0
    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    repetition_penalty: float = SamplingParams.repetition_penalty

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ConfigError("scenario.text is empty")
        for key in ("fixed_frames", "repeats", "fidelity_frames", "concurrent_rounds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"scenario.{key} must be at least 1")
        if self.warmup_runs < 0:
            raise ConfigError("scenario.warmup_runs must be >= 0")
        if self.max_repeats < self.repeats:
            raise ConfigError(
                f"scenario.max_repeats ({self.max_repeats}) is below scenario.repeats "
                f"({self.repeats})"
            )
        if self.ci_target_pct <= 0 or self.max_repeat_s <= 0:
            raise ConfigError("scenario.ci_target_pct and scenario.max_repeat_s must be positive")


@dataclass
class AsrConf:
    """The Whisper backend that transcribes generated speech for WER."""

    backend: str = "faster-whisper"
    # faster-whisper: a CTranslate2 model folder (None: the bundled tiny.en);
    # openai-whisper: a .pt file, or a model name found under download_root.
    model: str | None = None
    download_root: str | None = None  # openai-whisper: folder holding its model files
    device: str = "cpu"
    compute_type: str = "int8"
    language: str = "en"
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.backend not in ("faster-whisper", "openai-whisper"):
            raise ConfigError(
                f"quality.asr.backend {self.backend!r} is not faster-whisper or openai-whisper"
            )
        if self.backend == "openai-whisper" and not self.model:
            raise ConfigError(
                "quality.asr.model must name a local model file for the openai-whisper backend"
            )


# What each objective ranks by, and which way: a listener waiting for one request (the p50
# latency), or a server with many at once (the most audio seconds made per wall second).
OBJECTIVES: dict[str, tuple[str, str]] = {
    "latency": ("latency_p50_s", "min"),
    "throughput": ("aggregate_audio_s_per_s", "max"),
}


@dataclass
class QualityConf:
    """How the winner is chosen: an objective under gates.

    ``throughput`` adds two gates a server needs: every request of a trial's concurrent rounds
    faster than real time (``per_request_rtf_max`` < 1), and their first audio's p95 within
    ``ttfa_slo_s``."""

    objective: str = "latency"  # latency | throughput (see OBJECTIVES)
    ttfa_slo_s: float = 2.0  # throughput: the p95 of first-audio times under concurrency, at most
    tie_tolerance: float = 0.02  # relative: objectives this close count as a tie, lower memory wins
    must_beat_baseline: bool = True
    max_wer_delta: float = 0.05
    fidelity_gates: dict[str, float] = field(
        default_factory=dict
    )  # overrides of engine.measure.fidelity.FIDELITY_GATES
    asr: AsrConf = field(default_factory=AsrConf)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"quality.objective must be {' or '.join(OBJECTIVES)}, not {self.objective!r}"
            )
        if self.tie_tolerance < 0 or self.max_wer_delta < 0:
            raise ConfigError("quality.tie_tolerance and quality.max_wer_delta must be >= 0")
        if self.ttfa_slo_s <= 0:
            raise ConfigError("quality.ttfa_slo_s must be positive")

    @property
    def metric(self) -> str:
        """The trial metric the objective ranks by."""
        return OBJECTIVES[self.objective][0]

    @property
    def goal(self) -> str:
        """``min`` or ``max``: which way the metric is better."""
        return OBJECTIVES[self.objective][1]


@dataclass
class IsolationConf:
    """When other processes disturbed a trial's timings (NOISY), and what the sweep does then."""

    max_other_cores: float = 0.5  # CPU time of other processes during the timed repeats
    max_other_gpu_pct: float = 5.0  # share of GPU time other processes held meanwhile
    retries: int = 1  # a NOISY trial runs again this many times, after retry_wait_s
    retry_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if min(self.max_other_cores, self.max_other_gpu_pct, self.retry_wait_s) < 0:
            raise ConfigError("isolation limits and retry_wait_s must be >= 0")
        if self.retries < 0:
            raise ConfigError("isolation.retries must be >= 0")


@dataclass
class SelectionConf:
    """Which measured trials may win at all (the gates and objective live in ``quality``)."""

    allow_noisy: bool = False  # let a trial still NOISY after its re-run win


@dataclass
class SearchConf:
    """How candidates are chosen: the whole grid in order of promise, or Optuna over its space.

    ``optuna`` asks Hydra's Optuna sweeper's NSGA-II sampler for ``n_trials`` candidates from the
    grid's values, minimising latency and peak memory with the quality gates as constraints.
    """

    name: str = "grid"
    n_trials: int = 12
    seed: int = 0
    population_size: int = 6

    def __post_init__(self) -> None:
        if self.name not in ("grid", "optuna"):
            raise ConfigError(f"search must be grid or optuna, not {self.name!r}")
        if self.n_trials < 1 or self.population_size < 2:
            raise ConfigError("search.n_trials must be >= 1 and search.population_size >= 2")


@dataclass
class LauncherConf:
    """Where trials run: one after another here (``local``), or as Ray tasks (``ray``)."""

    name: str = "local"
    address: str | None = None  # ray: a cluster to join (default: $RAY_ADDRESS, else local)
    allow_shared_cpu: bool = False  # ray without GPUs: trials side by side on shared CPUs

    def __post_init__(self) -> None:
        if self.name not in ("local", "ray"):
            raise ConfigError(f"launcher must be local or ray, not {self.name!r}")


@dataclass
class GridConf:
    """Candidates over the engine group: the product of ``axes``, then each of ``points``."""

    name: str = "quick-cpu"
    axes: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    # The time budget when the sweep sets no ``budget_minutes`` (``budget_minutes=inf``: none).
    budget_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ConfigError("grid.budget_minutes must be positive")
        keys = set(self.axes).union(*(point.keys() for point in self.points))
        unknown = sorted(keys - set(KNOBS))
        if unknown:
            raise ConfigError(
                f"grid {self.name!r} sweeps unknown engine knobs: {', '.join(unknown)}"
            )
        empty = [key for key, values in self.axes.items() if not values]
        if empty:
            raise ConfigError(f"grid {self.name!r} has empty axes: {', '.join(empty)}")


@dataclass
class ScreenConf:
    """Screen, then confirm: every candidate is first timed on a short scenario (no fidelity, no
    WER); only the ``keep`` fastest, and any whose timings overlap the fastest one's, are then
    measured in full with the gates. ``enabled`` null: screen when the grid has at least
    ``min_candidates`` candidates to run (the search is the grid and trials run here)."""

    enabled: bool | None = None
    min_candidates: int = 8
    keep: int = 3
    fixed_frames: int = 64  # at most the scenario's
    repeats: int = 3
    max_repeat_s: float = 30.0

    def __post_init__(self) -> None:
        if min(self.keep, self.fixed_frames, self.repeats, self.min_candidates) < 1:
            raise ConfigError("screen.keep, fixed_frames, repeats and min_candidates must be >= 1")
        if self.max_repeat_s <= 0:
            raise ConfigError("screen.max_repeat_s must be positive")


@dataclass
class BaselineConf:
    """Upstream fish-speech as a user runs it today (``compile`` is its ``--compile``)."""

    compile: bool = False


LOCAL_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass
class TrackingConf:
    """Where MLflow writes: a sqlite store and a local artifact folder by default."""

    # MLFLOW_TRACKING_URI (e.g. a `make mlflow-server` on another machine) wins over the local file
    tracking_uri: str = f"${{oc.env:MLFLOW_TRACKING_URI,{LOCAL_TRACKING_URI}}}"
    artifact_root: str = "mlartifacts"
    experiment: str = "fishbench-sweep"


@dataclass
class SweepConf:
    """One sweep: a baseline and candidates on one checkpoint, scenario and machine."""

    engine: EngineConf = field(default_factory=EngineConf)
    hardware: HardwareConf = field(default_factory=HardwareConf)
    scenario: ScenarioConf = field(default_factory=ScenarioConf)
    quality: QualityConf = field(default_factory=QualityConf)
    grid: GridConf = field(default_factory=GridConf)
    search: SearchConf = field(default_factory=SearchConf)
    launcher: LauncherConf = field(default_factory=LauncherConf)
    isolation: IsolationConf = field(default_factory=IsolationConf)
    selection: SelectionConf = field(default_factory=SelectionConf)
    screen: ScreenConf = field(default_factory=ScreenConf)
    baseline: BaselineConf = field(default_factory=BaselineConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    checkpoint: str = "checkpoints/openaudio-s1-mini"
    synthetic_checkpoint: str = (
        "checkpoints/tiny-synthetic"  # made and used when ``checkpoint`` has no weights
    )
    reports_dir: str = str(REPORTS_DIR)
    trial_timeout_s: float = 900.0
    # Stop starting trials once this many minutes have passed (the baseline and one candidate
    # always run); the best so far is exported and the trials not run are listed. Unset: the
    # grid's ``budget_minutes``; ``inf``: no budget.
    budget_minutes: float | None = None
    sweep_id: str | None = None  # default: a timestamp
    resume: str | None = None  # "last" or a sweep id: skip trials already finished there
    retry_failed: bool = False  # on resume, run FAILED trials again

    def effective_budget(self) -> tuple[float | None, str]:
        """The budget in minutes (None: no budget) and where it comes from."""
        if self.budget_minutes is not None:
            if math.isinf(self.budget_minutes):
                return None, "budget_minutes=inf"
            return self.budget_minutes, f"budget_minutes={self.budget_minutes:g}"
        if self.grid.budget_minutes is None or self.launcher.name != "local":
            return None, "no budget_minutes"
        return self.grid.budget_minutes, f"the {self.grid.name} grid's default"

    def __post_init__(self) -> None:
        if self.trial_timeout_s <= 0:
            raise ConfigError("trial_timeout_s must be positive")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ConfigError("budget_minutes must be positive")
        if self.launcher.name == "ray" and (
            self.budget_minutes not in (None, math.inf) or self.search.name != "grid"
        ):
            raise ConfigError(
                "launcher=ray runs the grid's trials side by side; budget_minutes and "
                "search=optuna choose each trial after the last, so they need launcher=local"
            )


def register_configs() -> None:
    """Register the schema the primary config ``conf/sweep.yaml`` extends."""
    ConfigStore.instance().store(name="sweep_schema", node=SweepConf)
