"""A persistent, correctly keyed torch.compile cache and one explicit set of inductor settings.

Without this, every process starts torch.compile cold: inductor's FX graph cache and AOTAutograd's
cache live in ``/tmp/torchinductor_<user>``, which containers and reboots wipe, so the decode step
recompiles for 25 s to minutes at every start. ``configure_compilation`` keeps both caches under
``.cache/torch-compile/<key>`` (``COMPILE_CACHE_DIR`` overrides the root), where ``<key>`` digests
the torch version, the compile-relevant profile knobs, the checkpoint's ``config.json`` and the
device name, so a changed profile, checkpoint or torch never shares a folder with stale artifacts
(inductor's own cache keys would already refuse them; the folder split keeps each configuration's
artifacts apart and makes ``warm``/``cold`` in the log line mean something).

It also sets the inductor settings that change generated code explicitly, from the profile, in
every process that compiles. torchao's ``quantize_`` turns ``coordinate_descent_tuning`` (and three
other settings) on globally when it quantizes, so without this int rows were tuned and bf16 rows
were not. Call ``configure_compilation`` after quantization (it re-pins those settings) and before
the first ``torch.compile`` in the process (see ``configure_compilation``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from engine.profile import EngineProfile

log = logging.getLogger(__name__)

COMPILE_CACHE_ENV = "COMPILE_CACHE_DIR"
DEFAULT_CACHE_ROOT = Path(".cache") / "torch-compile"
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # read by torch._inductor.runtime.cache_dir_utils

# Profile knobs that never change compiled code: left out of the key so that changing them
# reuses the compiled artifacts (``knobs()`` already drops ``provenance``).
NON_COMPILE_KNOBS = frozenset({"cache_limit", "prefix_cache_mb", "warmup_buckets"})

# The counters torch bumps on each cache lookup (torch/_inductor/codecache.py and
# torch/_functorch/_aot_autograd/autograd_cache.py), under ``counters[group][name]``.
_COUNTERS = {
    "fxgraph_cache_hit": ("inductor", "fxgraph_cache_hit"),
    "fxgraph_cache_miss": ("inductor", "fxgraph_cache_miss"),
    "fxgraph_cache_bypass": ("inductor", "fxgraph_cache_bypass"),
    "autograd_cache_hit": ("aot_autograd", "autograd_cache_hit"),
    "autograd_cache_miss": ("aot_autograd", "autograd_cache_miss"),
    "autograd_cache_bypass": ("aot_autograd", "autograd_cache_bypass"),
}


def inductor_settings(profile: EngineProfile) -> dict[str, object]:
    """The compiler config values every compiling process sets, keyed ``<module>.<name>``.

    ``inductor.*`` is ``torch._inductor.config``, ``functorch.*`` is ``torch._functorch.config``.
    The four settings torchao's ``recommended_inductor_config_setter`` flips are pinned here too,
    so a quantized row and a float row compile with the same settings.
    """
    tuning = bool(profile.coordinate_descent_tuning)
    return {
        "inductor.fx_graph_cache": True,
        "inductor.autotune_local_cache": True,
        "functorch.enable_autograd_cache": True,
        "inductor.coordinate_descent_tuning": tuning,
        "inductor.coordinate_descent_check_all_directions": tuning,
        "inductor.force_fuse_int_mm_with_mul": True,
        "inductor.triton.unique_kernel_names": True,
    }


def apply_inductor_settings(profile: EngineProfile) -> dict[str, object]:
    """Set ``inductor_settings(profile)`` on the live config modules; returns what was set."""
    import torch._functorch.config
    import torch._inductor.config

    modules = {"inductor": torch._inductor.config, "functorch": torch._functorch.config}
    settings = inductor_settings(profile)
    for key, value in settings.items():
        prefix, *path, name = key.split(".")
        target: Any = modules[prefix]
        for part in path:
            target = getattr(target, part)
        setattr(target, name, value)
    return settings


def _config_bytes(config_json: bytes | str | dict | Path) -> bytes:
    """Canonical JSON bytes of the checkpoint config, so formatting alone never changes the key."""
    if isinstance(config_json, Path):
        config_json = config_json.read_bytes()
    if isinstance(config_json, dict):
        data: Any = config_json
    else:
        raw = config_json.encode() if isinstance(config_json, str) else bytes(config_json)
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def cache_key(
    profile: EngineProfile,
    config_json: bytes | str | dict | Path,
    device_name: str,
    torch_version: str = torch.__version__,
) -> str:
    """16 hex digits over torch's version, the compile-relevant knobs, config.json and the device.

    ``config_json`` is the checkpoint's ``config.json`` (its bytes, text, parsed dict or path);
    ``device_name`` is e.g. ``torch.cuda.get_device_name()`` or ``"cpu"``.
    """
    knobs = {k: v for k, v in profile.knobs().items() if k not in NON_COMPILE_KNOBS}
    digest = hashlib.sha256()
    for part in (
        torch_version.encode(),
        json.dumps(knobs, sort_keys=True, default=str).encode(),
        _config_bytes(config_json),
        device_name.encode(),
    ):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """``$COMPILE_CACHE_DIR`` if set, else ``.cache/torch-compile`` under the working directory."""
    return Path(os.environ.get(COMPILE_CACHE_ENV) or DEFAULT_CACHE_ROOT).absolute()


def _holds_artifacts(folder: Path) -> bool:
    for sub in ("fxgraph", "aotautograd"):
        path = folder / sub
        if path.is_dir() and any(p.is_file() for p in path.rglob("*")):
            return True
    return False


def configure_compilation(
    profile: EngineProfile,
    config_json: bytes | str | dict | Path,
    device_name: str,
    root: Path | None = None,
) -> Path:
    """Pin the inductor settings and point inductor's caches at ``root/<cache_key>``.

    Call it before the first ``torch.compile`` in the process (and after quantization, which may
    flip inductor settings). ``torch._inductor``'s ``cache_dir()`` reads ``TORCHINDUCTOR_CACHE_DIR``
    at every call, but code compiled earlier in the process stays where it was written and a few
    derived paths are memoised (cleared here when the folder changes); a fresh process that calls
    this first gets everything, FX graphs, AOTAutograd entries, autotuning results and Triton
    kernels (unless ``TRITON_CACHE_DIR`` is set), in the one folder. Returns that folder.
    """
    import torch._inductor.config
    import torch._inductor.utils

    apply_inductor_settings(profile)
    base = (Path(root) if root is not None else cache_root()).absolute()
    remember_isa_checks(base)
    folder = base / cache_key(profile, config_json, device_name)
    folder.mkdir(parents=True, exist_ok=True)
    warm = _holds_artifacts(folder)
    if os.environ.get(INDUCTOR_CACHE_ENV) != str(folder):
        os.environ[INDUCTOR_CACHE_ENV] = str(folder)
        torch._inductor.utils.clear_caches()  # the memoised paths under the previous folder
    log.info("torch.compile cache: %s (%s)", folder, "warm" if warm else "cold")
    if torch._inductor.config.force_disable_caches:
        log.warning("torch.compile caches are disabled (TORCHINDUCTOR_FORCE_DISABLE_CACHES)")
    return folder


isa_probes_run = 0  # ISA probes this process had to run (0 once their verdicts are on disk)


def remember_isa_checks(root: Path) -> None:
    """Keep inductor's CPU vector-ISA verdicts on disk instead of re-probing in every process.

    Before its first C++ kernel, inductor checks each candidate ISA (AVX2, AVX-512, its bf16 and
    VNNI extensions, AMX) by compiling a probe and loading it in a fresh Python subprocess: six
    subprocesses that each import torch, about 22 s of every warm start on this AVX-512 machine
    (measured with cProfile), more than the cached compile itself. The verdict depends only on the
    CPU, the C++ compiler, torch and the probe, which is exactly what the key holds, so a verdict
    is reused only where it would come out the same.
    """
    from torch._inductor import cpu_vec_isa
    from torch._inductor.cpp_builder import get_cpp_compiler

    original = cpu_vec_isa.VecISA.check_build
    if getattr(original, "remembered", False):
        return
    store = Path(root) / "isa-checks.json"
    cpu = _cpu_fingerprint()

    def check_build(self: cpu_vec_isa.VecISA, code: str) -> bool:
        key = hashlib.sha256(
            "\0".join(
                (torch.__version__, cpu, get_cpp_compiler(), str(self._arch_flags), code)
            ).encode()
        ).hexdigest()
        known = json.loads(store.read_text()) if store.is_file() else {}
        if key not in known:
            global isa_probes_run
            isa_probes_run += 1
            known[key] = bool(original(self, code))
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            tmp.replace(store)
        return known[key]

    check_build.remembered = True
    cpu_vec_isa.VecISA.check_build = check_build


def _cpu_fingerprint() -> str:
    """The CPU's model name and feature flags (what decides which vector ISAs run)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    wanted = [line for line in info if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def compile_counters() -> dict[str, int]:
    """This process's compile-cache lookups so far: FX graph and AOTAutograd hits, misses, bypasses.

    A warm start shows hits and no misses; a cold one the reverse.
    """
    from torch._dynamo.utils import counters

    return {name: int(counters[group][key]) for name, (group, key) in _COUNTERS.items()}
