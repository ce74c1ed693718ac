"""What a sweep runs on: the checkpoint, the reference recording and the machine.

A fresh machine has none of the real weights and no recordings, so the sweep makes what it can
(the tiny synthetic checkpoint, a Piper recording) instead of failing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import ConfigError
from engine.model.checkpoint import CheckpointError, CheckpointFolder
from engine.model.synthetic import make_checkpoint
from engine.profile import Hardware
from harness.quality.piper_voice import write_speech
from harness.sweep.config import ScenarioConf, SweepConf

log = logging.getLogger(__name__)


def prepare_checkpoint(conf: SweepConf) -> CheckpointFolder:
    """``conf.checkpoint``; when that folder does not exist, the tiny synthetic one (made once).

    A folder that exists but cannot be loaded is an error, not a reason to sweep something else.
    """
    if Path(conf.checkpoint).exists():
        return CheckpointFolder.open(conf.checkpoint)
    log.info("no checkpoint in %s: using the tiny synthetic one", conf.checkpoint)
    try:
        return CheckpointFolder.open(conf.synthetic_checkpoint)
    except CheckpointError:
        log.info("making the tiny synthetic checkpoint in %s", conf.synthetic_checkpoint)
        return make_checkpoint("tiny", conf.synthetic_checkpoint, seed=0)


def prepare_reference(scenario: ScenarioConf) -> str | None:
    """The scenario's reference recording, spoken by Piper when it is missing."""
    if scenario.reference_audio is None:
        return None
    path = Path(scenario.reference_audio)
    if not path.is_file():
        if not scenario.generate_reference:
            raise FileNotFoundError(f"scenario.reference_audio {path} does not exist")
        write_speech(path, scenario.reference_text)
    return str(path.resolve())


def check_hardware(conf: SweepConf) -> Hardware:
    hw = Hardware.detect(conf.hardware.device, probe_bitsandbytes=True)
    if conf.hardware.device == "cuda" and hw.device != "cuda":
        raise ConfigError(
            f"hardware={conf.hardware.name} needs CUDA, which this machine lacks; use hardware=cpu"
        )
    return hw
