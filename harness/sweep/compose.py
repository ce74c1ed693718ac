"""Compose the sweep config the Hydra way, including ``-m`` sweeps over engine knobs.

Hydra's own multirun would launch one job per combination, but a sweep needs one baseline, one
MLflow parent run, one progress bar, resume and a winner across all of them. So ``-m
engine.quantization=none,int8 engine.chunk_size=16,32`` is parsed with Hydra's override grammar
(``a,b``, ``range()``, ``choice()``) and becomes the grid's axes (replacing the preset's axes and
points); every other override composes as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from engine.errors import ConfigError
from engine.machine import device_name
from engine.model.checkpoint import CheckpointError, CheckpointFolder
from engine.paths import CONF_DIR
from harness.sweep.config import register_configs

AUTO_GROUPS = ("hardware", "grid", "scenario")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/sweep.yaml`` with ``overrides`` applied (no sweeps)."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="sweep", overrides=list(overrides))
    except HydraException as exc:  # unknown group option or key: a configuration error
        raise ConfigError(str(exc)) from exc


def has_real_checkpoint(path: str | Path) -> bool:
    try:
        return not CheckpointFolder.open(path).is_synthetic
    except CheckpointError:
        return False


def detect_hardware_preset(gpu_name: str) -> str:
    """The hardware preset whose ``match`` names this GPU; the generic ``cuda`` one otherwise."""
    for path in sorted((CONF_DIR / "hardware").glob("*.yaml")):
        if any(
            token.lower() in gpu_name.lower() for token in OmegaConf.load(path).get("match", [])
        ):
            return path.stem
    return "cuda"


def auto_groups(checkpoint: str) -> dict[str, str]:
    """Group choices for this machine: the GPU sweep needs CUDA and real weights, else quick-cpu."""
    import torch

    if not (torch.cuda.is_available() and has_real_checkpoint(checkpoint)):
        return {"hardware": "cpu", "grid": "quick-cpu"}
    return {
        "hardware": detect_hardware_preset(device_name()),
        "grid": "full-gpu",
        "scenario": "long",
    }


def build_config(overrides: Sequence[str] = (), multirun: bool = False) -> DictConfig:
    """The composed config: auto group choices unless overridden, ``-m`` sweeps as grid axes."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(str(exc)) from exc
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0].input_line} sweeps several values; add -m (--multirun)")
    bad = [o.input_line for o in sweeps if not o.key_or_group.startswith("engine.")]
    if bad:
        raise ConfigError(f"only engine knobs can be swept with -m, not: {', '.join(bad)}")
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    chosen = {o.key_or_group for o in parsed}
    checkpoint = compose_config(plain).checkpoint
    extra = [
        f"{group}={value}"
        for group, value in auto_groups(checkpoint).items()
        if group not in chosen
    ]
    cfg = compose_config(extra + plain)
    if sweeps:
        cfg.grid.name = "command-line"
        cfg.grid.axes = {
            o.key_or_group.removeprefix("engine."): list(o.sweep_iterator()) for o in sweeps
        }
        cfg.grid.points = []
    return cfg
