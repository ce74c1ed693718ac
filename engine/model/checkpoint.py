"""Checkpoint folders in the released S1-mini layout, loaded strictly.

Upstream loads the codec with ``strict=False`` and logs (rather than refuses) missing DualAR
weights, so a wrong file silently produces noise. Here every key and shape must match; the only
things allowed to differ are the non-persistent buffers the model rebuilds itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from engine.errors import UserError
from engine.paths import CONF_DIR

log = logging.getLogger(__name__)

REQUIRED_FILES = (
    "config.json",
    "model.pth",
    "codec.pth",
    "tokenizer.tiktoken",
    "special_tokens.json",
)
SYNTHETIC_MARKER = "SYNTHETIC.json"


class CheckpointError(UserError):
    """A checkpoint folder or one of its files cannot be used; the message names the file."""


def upstream_codec_config_path() -> Path:
    """The Hydra config upstream builds the released codec from."""
    return Path(str(resources.files("fish_speech") / "configs" / "modded_dac_vq.yaml"))


CODEC_CONFIGS = {
    "modded_dac_vq": upstream_codec_config_path,
    "tiny": lambda: CONF_DIR / "codec" / "tiny.yaml",
}


def load_codec_config(name: str) -> Any:
    """The Hydra config (an OmegaConf node) of a known codec layout."""
    if name not in CODEC_CONFIGS:
        raise CheckpointError(f"unknown codec config {name!r}; known: {', '.join(CODEC_CONFIGS)}")
    return OmegaConf.load(CODEC_CONFIGS[name]())


@dataclass(frozen=True)
class CheckpointFolder:
    """A checkpoint folder: its files, its config and where its codec config comes from."""

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> CheckpointFolder:
        folder = cls(Path(path))
        if not folder.path.is_dir():
            raise CheckpointError(f"checkpoint folder {folder.path} does not exist")
        missing = [name for name in REQUIRED_FILES if not (folder.path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint folder {folder.path} is missing {', '.join(missing)}"
            )
        return folder

    def file(self, name: str) -> Path:
        return self.path / name

    @cached_property
    def config(self) -> dict[str, Any]:
        try:
            data = json.loads(self.file("config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.file('config.json')} is not valid JSON: {exc}") from exc
        if data.get("model_type") != "dual_ar":
            raise CheckpointError(
                f"{self.file('config.json')}: model_type {data.get('model_type')!r} "
                "is not 'dual_ar'"
            )
        return data

    @cached_property
    def synthetic(self) -> dict[str, Any] | None:
        """The synthetic-weights marker, or None for a real checkpoint."""
        marker = self.file(SYNTHETIC_MARKER)
        return json.loads(marker.read_text()) if marker.is_file() else None

    @property
    def is_synthetic(self) -> bool:
        return self.synthetic is not None

    @property
    def codec_config_name(self) -> str:
        return (self.synthetic or {}).get("codec_config", "modded_dac_vq")

    def codec_config(self) -> Any:
        return load_codec_config(self.codec_config_name)

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 over config, tokenizer and the first and last MiB of each weight file.

        Hashing 3.6 GB of weights on every start would cost seconds; the size plus head and
        tail identify a file well enough to warn that a profile was made for other weights.
        """
        digest = hashlib.sha256()
        for name in REQUIRED_FILES:
            path = self.file(name)
            size = path.stat().st_size
            digest.update(f"{name}:{size}".encode())
            with path.open("rb") as handle:
                digest.update(handle.read(1 << 20))
                if size > 2 << 20:
                    handle.seek(-(1 << 20), 2)
                    digest.update(handle.read())
        return digest.hexdigest()[:16]


GENERATOR_PREFIX = "generator."
LIGHTNING_MODEL_PREFIX = "model."
QUANTIZED_SUFFIXES = (".scales", ".scales_and_zeros")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file, memory-mapped, with a Lightning ``state_dict`` unwrapped.

    Memory-mapping keeps a check of 3.6 GB of weights from reading them: only what is used is paged.
    """
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} cannot be read as a PyTorch state_dict: {exc}") from exc
    if isinstance(data, Mapping) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return dict(data)


def _top_level(keys: list[str]) -> str:
    return ", ".join(sorted({key.split(".", 1)[0] + ".*" for key in keys}))


def codec_weights(path: Path) -> dict[str, torch.Tensor]:
    """``codec.pth`` in any layout upstream's codec loader accepts, as the DAC's own keys.

    A training (Lightning) checkpoint holds ``generator.*`` next to ``discriminator.*`` and other
    modules; as upstream's ``load_model`` does, only the generator is kept, its prefix removed.
    What is kept is then loaded as strictly as a plain state_dict.
    """
    weights = read_state_dict(path)
    if not any(key.startswith(GENERATOR_PREFIX) for key in weights):
        return weights
    kept = {
        key.removeprefix(GENERATOR_PREFIX): value
        for key, value in weights.items()
        if key.startswith(GENERATOR_PREFIX)
    }
    dropped = [key for key in weights if not key.startswith(GENERATOR_PREFIX)]
    if dropped:
        log.info(
            "%s: training checkpoint; using its %d generator tensors, ignoring %d others (%s)",
            path,
            len(kept),
            len(dropped),
            _top_level(dropped),
        )
    return kept


def dual_ar_weights(path: Path) -> dict[str, torch.Tensor]:
    """``model.pth`` in any layout upstream's ``from_pretrained`` accepts, as the model's own keys.

    A TextToSemantic Lightning checkpoint prefixes every key with ``model.``; upstream removes
    it and drops the ``audio_*`` tensors the DualAR model has no place for. Upstream's
    pre-quantized files (``tools/llama/quantize.py``) are refused: they need other module classes,
    and the profile's ``quantization`` does the same from the bf16 weights.
    """
    weights = read_state_dict(path)
    if any(key.startswith(LIGHTNING_MODEL_PREFIX) for key in weights):
        weights = {key.removeprefix(LIGHTNING_MODEL_PREFIX): v for key, v in weights.items()}
    quantized = [key for key in weights if key.endswith(QUANTIZED_SUFFIXES)]
    if quantized:
        raise CheckpointError(
            f"{path} holds upstream's pre-quantized weights ({quantized[0]}, ...); use the "
            "released bf16 model.pth and set quantization in the profile instead"
        )
    return {key: value for key, value in weights.items() if "audio_" not in key}


def _summary(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
    return f"{len(keys)} {label}: {shown}"


def load_strict(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """Assign ``weights`` into ``module``, refusing any missing, unexpected or mis-shaped key.

    ``load_state_dict`` runs the modules' own load hooks first, so layouts upstream converts on
    load (split ``wq/wk/wv``, legacy weight-norm ``weight_g/weight_v``) are accepted.
    """
    try:
        result = module.load_state_dict(dict(weights), strict=False, assign=True)
    except RuntimeError as exc:
        mismatched = re.findall(r"size mismatch for (\S+?):", str(exc))
        detail = _summary("shape mismatch", mismatched) if mismatched else str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not match the model: {detail}") from exc
    problems = [
        _summary(label, sorted(keys))
        for label, keys in (
            ("missing", result.missing_keys),
            ("unexpected", result.unexpected_keys),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(problems))
