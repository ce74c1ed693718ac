"""A persistent torch.compile cache that profiles share, and one explicit set of inductor settings.

Without this, every process starts torch.compile cold: inductor's FX graph cache and AOTAutograd's
cache live in ``/tmp/torchinductor_<user>``, which containers and reboots wipe, so the decode step
recompiles for 25 s to minutes at every start. ``configure_compilation`` keeps both caches under
``.cache/torch-compile/<key>`` (``COMPILE_CACHE_DIR`` overrides the root), where ``<key>`` digests
only the torch version, the checkpoint's ``config.json``, the device name and the CPU. Profiles
share that folder: inductor's own cache keys are content hashes of each graph (its code, its
inputs' shapes, strides and dtypes), the inductor config (a compile mode, coordinate-descent
tuning), the CUDA matmul settings (TF32), torch, Triton and the GPU, so a graph two profiles share
compiles once and a graph that differs never reads another's artifact. Splitting the folder per
profile, as it once was, made a sweep compile every ``chunk_size`` or ``num_streams`` variant cold.
Which knobs change which graphs is ``GRAPH_KNOBS`` and ``SETTING_KNOBS``, found per knob by
``tests/engine/test_compile_graphs.py``.

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from engine.profile import EngineProfile, batch_size

log = logging.getLogger(__name__)

COMPILE_CACHE_ENV = "COMPILE_CACHE_DIR"
DEFAULT_CACHE_ROOT = Path(".cache") / "torch-compile"
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # read by torch._inductor.runtime.cache_dir_utils

BUILT_GRAPHS = "built-graphs.json"  # in the cache folder: the graph units sweeps have compiled

# The knobs that shape each compiled function's graphs (their code or their inputs' shapes and
# dtypes), per function. Every other knob leaves them unchanged, so profiles differing only there
# share the compiled artifacts. ``int4_group_size`` counts only under int4; ``int8_kernel`` is
# ``stock`` but under CPU bf16 int8.
_MODEL_KNOBS = (
    "device",
    "precision",
    "quantization",
    "int4_group_size",
    "int8_kernel",
    "max_seq_len",
)
GRAPH_KNOBS: dict[str, tuple[str, ...]] = {
    "decode_step": _MODEL_KNOBS,
    "prefill": _MODEL_KNOBS,
    "codec": ("device", "precision", "codec_layout"),  # one graph per padded decode length
}
# ``max_batch > 1`` compiles the batched step (one graph per padded batch size, over slot caches
# of ``batch_size(max_batch)`` rows) and a prefill that stops at the hidden state, instead.
GRAPH_KNOBS |= {"batch_step": GRAPH_KNOBS["decode_step"], "batch_prefill": GRAPH_KNOBS["prefill"]}
# The knobs that change the inductor settings a function's graphs compile under (part of
# inductor's cache key, not of the graph). ``tf32`` counts only on CUDA (CPU matmuls ignore it).
SETTING_KNOBS: dict[str, tuple[str, ...]] = {
    "decode_step": ("compile_decode", "coordinate_descent_tuning", "tf32"),
    "prefill": ("coordinate_descent_tuning", "tf32"),
    "codec": ("compile_codec", "coordinate_descent_tuning", "tf32"),
}
SETTING_KNOBS |= {
    "batch_step": SETTING_KNOBS["decode_step"],
    "batch_prefill": SETTING_KNOBS["prefill"],
}

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


# Functions in our graphs that AOTAutograd's cache does not know to be safe, keyed by what their
# behaviour depends on (torch's version: both are torch's). ``sdpa_kernel`` (engine.dual_ar: fused
# SDPA or an error) puts its backends into the graph as calls that name them
# (``_backend_from_string``, a name -> enum lookup) and set them (``_sdpa_kernel``), all from the
# graph's own constants. Without this every warm start re-traced each graph through AOTAutograd
# (``autograd_cache_bypass``).
CACHEABLE_FUNCTIONS = {
    "torch.nn.attention._backend_from_string": torch.__version__,
    "torch.nn.attention._sdpa_kernel": torch.__version__,
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
        "inductor.unsafe_marked_cacheable_functions": CACHEABLE_FUNCTIONS,
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
    config_json: bytes | str | dict | Path,
    device_name: str,
    torch_version: str = torch.__version__,
) -> str:
    """16 hex digits over torch's version, config.json, the device and the CPU: no profile knob.

    ``config_json`` is the checkpoint's ``config.json`` (its bytes, text, parsed dict or path);
    ``device_name`` is e.g. ``torch.cuda.get_device_name()`` or ``"cpu"``. The CPU is part of it
    because inductor's keys leave the vector ISA its C++ kernels were built for out, and a cache
    volume may move to another machine.
    """
    digest = hashlib.sha256()
    for part in (
        torch_version.encode(),
        _config_bytes(config_json),
        device_name.encode(),
        _cpu_fingerprint().encode(),
    ):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """``$COMPILE_CACHE_DIR`` if set, else ``.cache/torch-compile`` under the working directory."""
    return Path(os.environ.get(COMPILE_CACHE_ENV) or DEFAULT_CACHE_ROOT).absolute()


def cache_folder(
    config_json: bytes | str | dict | Path, device_name: str, root: Path | None = None
) -> Path:
    """``root/<cache_key>`` (default root: ``cache_root()``); nothing is created."""
    base = (Path(root) if root is not None else cache_root()).absolute()
    return base / cache_key(config_json, device_name)


def _artifact_count(folder: Path) -> int:
    return sum(
        1 for sub in ("fxgraph", "aotautograd") for p in (folder / sub).rglob("*") if p.is_file()
    )


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
    folder = cache_folder(config_json, device_name, base)
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = _artifact_count(folder)
    if os.environ.get(INDUCTOR_CACHE_ENV) != str(folder):
        os.environ[INDUCTOR_CACHE_ENV] = str(folder)
        torch._inductor.utils.clear_caches()  # the memoised paths under the previous folder
    log.info(
        "torch.compile cache: %s (%s; shared by every profile, inductor's keys pick the hits)",
        folder,
        f"warm: {artifacts} artifacts" if artifacts else "cold",
    )
    if torch._inductor.config.force_disable_caches:
        log.warning("torch.compile caches are disabled (TORCHINDUCTOR_FORCE_DISABLE_CACHES)")
    return folder


def _unit(function: str, profile: EngineProfile, detail: str = "") -> str:
    """One graph unit's identity: the function, and the values of the knobs that shape it."""
    data = profile.knobs()
    skip = {"int4_group_size"} if data["quantization"] != "int4" else set()
    if data["device"] != "cuda":
        skip.add("tf32")
    names = [n for n in (*GRAPH_KNOBS[function], *SETTING_KNOBS[function]) if n not in skip]
    return f"{function}{detail}(" + ",".join(f"{n}={data[n]}" for n in names) + ")"


def compiled_graphs(profile: EngineProfile, codec_lengths: Iterable[int] | None = None) -> set[str]:
    """The graph units a *resolved* profile compiles: its frame step (one graph per KV bucket the
    requests reach), its prefill, and one codec graph per decode length (``codec_lengths``,
    default every warmed one). Two profiles compile a unit once between them when it is the same
    string in both: only ``GRAPH_KNOBS`` and ``SETTING_KNOBS`` enter it."""
    units = set()
    batched = profile.max_batch > 1
    if profile.compile_decode != "none" and batched:
        rows = batch_size(profile.max_batch)
        units |= {_unit("batch_step", profile, f"@{n}of{rows}") for n in profile.batch_sizes()}
    elif profile.compile_decode != "none":
        units.add(_unit("decode_step", profile))
    if profile.compile_prefill:
        units.add(_unit("batch_prefill" if batched else "prefill", profile))
    if profile.compile_codec != "none":
        if codec_lengths is None:
            from engine.codec import decode_lengths

            codec_lengths = decode_lengths(profile)
        units |= {_unit("codec", profile, f"@{length}") for length in codec_lengths}
    return units


def built_graphs(folder: Path) -> set[str]:
    """The graph units sweeps recorded as compiled into ``folder`` (empty when unknown)."""
    try:
        return set(json.loads((Path(folder) / BUILT_GRAPHS).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def remember_built(folder: Path, units: Iterable[str]) -> None:
    """Add ``units`` to ``folder``'s record of compiled graph units (a sweep's estimate reads it).

    Written whole and replaced atomically; two sweeps writing at the same instant may lose one
    entry, which only makes a later estimate count that unit as cold again.
    """
    path = Path(folder) / BUILT_GRAPHS
    known = built_graphs(folder)
    if set(units) <= known:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sorted(known | set(units)), indent=1))
    tmp.replace(path)


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
