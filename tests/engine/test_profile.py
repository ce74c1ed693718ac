"""The profile: validated, YAML round trip, env overrides, and hardware fallbacks that say why."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.profile import (
    DEFAULT_MAX_SEQ_LEN,
    ENV_OVERRIDES,
    EngineProfile,
    Hardware,
    Provenance,
    describe_validation_error,
    resolve_profile,
)
from serving.settings import Settings

CPU = Hardware("cpu", "cpu", None, False)
CPU_BNB = Hardware("cpu", "cpu", None, True)
RTX_2080 = Hardware("cuda", "NVIDIA GeForce RTX 2080", (7, 5), False)
RTX_4060 = Hardware("cuda", "NVIDIA GeForce RTX 4060", (8, 9), True)


def test_yaml_round_trip_keeps_every_knob_and_provenance(tmp_path: Path) -> None:
    profile = EngineProfile(
        precision="bf16",
        quantization="int8",
        compile_decode="reduce-overhead",
        chunk_size=24,
        provenance=Provenance(
            gpu_name="H100", checkpoint_hash="abc", metrics={"latency_p50_s": 0.5}
        ),
    )
    assert EngineProfile.load(profile.save(tmp_path / "p.yaml")) == profile


def test_unknown_or_invalid_knobs_are_rejected() -> None:
    with pytest.raises(ValidationError):
        EngineProfile(precision="int3")
    with pytest.raises(ValidationError):
        EngineProfile(chunk_size=0)
    with pytest.raises(ValidationError):
        EngineProfile.model_validate({"not_a_knob": 1})
    with pytest.raises(ValidationError, match="kv_cache=false"):
        EngineProfile(kv_cache=False)
    assert "kv_cache" not in EngineProfile.model_validate({"kv_cache": True}).knobs()  # old files


def test_every_env_override_sets_its_knob() -> None:
    env = {
        "MIXED_PRECISION": "fp16",
        "QUANTIZATION": "4bit",
        "ENABLE_TORCH_COMPILE": "true",
        "MAX_SEQ_LEN": "1024",
        "CHUNK_SIZE": "8",
        "FIRST_CHUNK_SIZE": "2",
        "NUM_STREAMS": "2",
        "CACHE_LIMIT": "5",
        "MAX_BATCH": "4",
        "CODEC_LAYOUT": "UPSTREAM",
        "CODEC_STREAMING": "context",
        "CODEC_THREAD": "true",
        "INT8_KERNEL": "Stock",
    }
    assert set(env) == set(ENV_OVERRIDES)  # a new override needs a line here
    profile = EngineProfile.from_env(env=env)
    assert profile.precision == "fp16"
    assert profile.quantization == "nf4"
    assert profile.compile_decode == "reduce-overhead" and profile.compile_prefill
    assert (profile.max_seq_len, profile.chunk_size, profile.num_streams, profile.cache_limit) == (
        1024,
        8,
        2,
        5,
    )
    assert profile.first_chunk_size == 2
    assert profile.max_batch == 4
    assert (profile.codec_layout, profile.codec_streaming) == ("upstream", "context")
    assert profile.codec_thread
    assert profile.int8_kernel == "stock"


def _example_sections() -> dict[str, set[str]]:
    """Variables named in ``.env.example`` (set or commented out), by ``# --- x ---`` section."""
    sections: dict[str, set[str]] = {}
    current = ""
    for line in (Path(__file__).resolve().parents[2] / ".env.example").read_text().splitlines():
        if line.startswith("# ---"):
            current = line.strip("# -").split(" (")[0]
        elif match := re.fullmatch(r"#? ?([A-Z][A-Z0-9_]*)=.*", line):
            sections.setdefault(current, set()).add(match.group(1))
    return sections


def test_env_example_lists_exactly_the_profile_overrides_and_the_service_settings() -> None:
    sections = _example_sections()
    assert sections["engine profile overrides"] == set(ENV_OVERRIDES)
    assert sections["REST service"] == {name.upper() for name in Settings.model_fields}
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    assert f"MAX_SEQ_LEN={DEFAULT_MAX_SEQ_LEN}\n" in example


def test_max_seq_len_must_fill_whole_kv_blocks() -> None:
    with pytest.raises(ValidationError) as caught:
        EngineProfile.from_env(env={"MAX_SEQ_LEN": "1001"})
    assert describe_validation_error(caught.value) == (
        "MAX_SEQ_LEN=1001: max_seq_len must be a multiple of 8 "
        "(the KV cache is allocated in blocks of 8), got 1001"
    )
    with pytest.raises(ValidationError, match="max_seq_len must be a multiple of 8"):
        EngineProfile(max_seq_len=1001)
    assert EngineProfile(max_seq_len=1000).max_seq_len == 1000
    assert DEFAULT_MAX_SEQ_LEN == 4096 == EngineProfile().max_seq_len


def test_validation_errors_read_as_one_line_naming_each_knob() -> None:
    with pytest.raises(ValidationError) as caught:
        EngineProfile(int4_group_size=48)
    assert describe_validation_error(caught.value) == (
        "int4_group_size: Input should be 32, 64, 128 or 256"
    )
    with pytest.raises(ValidationError) as caught:
        EngineProfile.model_validate({"not_a_knob": 1, "chunk_size": "x"})
    assert describe_validation_error(caught.value) == (
        "chunk_size: Input should be a valid integer, unable to parse string as an integer; "
        "not_a_knob: Extra inputs are not permitted"
    )
    with pytest.raises(ValidationError) as caught:
        EngineProfile.from_env(env={"MIXED_PRECISION": "int3", "MAX_SEQ_LEN": "9000"})
    assert describe_validation_error(caught.value) == (
        "MIXED_PRECISION=int3: precision: Input should be 'auto', 'bf16', 'fp16' or 'fp32'; "
        "MAX_SEQ_LEN=9000: max_seq_len: Input should be less than or equal to 8192"
    )
    with pytest.raises(ValidationError, match="encode_chunk_seconds"):
        EngineProfile(encode_chunk_seconds=float("inf"))


def test_unparseable_env_overrides_name_the_variable() -> None:
    with pytest.raises(ValueError, match=r"^MAX_SEQ_LEN: expected an integer, got 'abc'$"):
        EngineProfile.from_env(env={"MAX_SEQ_LEN": "abc"})
    with pytest.raises(ValueError, match=r"^CHUNK_SIZE: expected an integer, got 'x'$"):
        EngineProfile.from_env(env={"CHUNK_SIZE": "x"})
    with pytest.raises(ValueError, match="^ENABLE_TORCH_COMPILE: expected true or false"):
        EngineProfile.from_env(env={"ENABLE_TORCH_COMPILE": "maybe"})


def test_yaml_that_is_not_a_profile_mapping_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("precision: [bf16\n")
    with pytest.raises(ValueError, match=r"broken.yaml: not valid YAML at line \d+, column \d+"):
        EngineProfile.load(broken)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- precision\n")
    with pytest.raises(
        ValueError, match="listed.yaml: expected a mapping of knob: value, got a list"
    ):
        EngineProfile.load(listed)


def test_max_seq_len_falls_back_to_the_checkpoint_limit(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        active, fallbacks = resolve_profile(
            EngineProfile(max_seq_len=8192), CPU, model_max_seq_len=2048
        )
    assert active.max_seq_len == 2048
    assert [str(f) for f in fallbacks] == [
        "max_seq_len: 8192 -> 2048 (the checkpoint's config.json allows 2048)"
    ]
    assert [r.getMessage() for r in caplog.records] == [f"profile fallback: {fallbacks[0]}"]
    odd = resolve_profile(EngineProfile(max_seq_len=8192), CPU, model_max_seq_len=2047)[0]
    assert odd.max_seq_len == 2040
    assert resolve_profile(EngineProfile(max_seq_len=1024), CPU, 2048) == (
        EngineProfile(
            max_seq_len=1024,
            device="cpu",
            precision="fp32",
            tf32=False,
            codec_layout="channels_last",
            codec_streaming="stateful",
            int8_kernel="stock",
        ),
        [],
    )


def test_first_chunk_larger_than_chunk_size_falls_back_to_it() -> None:
    active, fallbacks = resolve_profile(EngineProfile(chunk_size=8, first_chunk_size=12), CPU)
    assert (active.chunk_size, active.first_chunk_size) == (8, 8)
    assert [str(f) for f in fallbacks] == [
        "first_chunk_size: 12 -> 8 (it cannot exceed chunk_size 8)"
    ]
    assert resolve_profile(EngineProfile(chunk_size=8, first_chunk_size=8), CPU)[1] == []


def test_cpu_falls_back_with_one_line_per_change(caplog: pytest.LogCaptureFixture) -> None:
    requested = EngineProfile(precision="fp16", num_streams=3, compile_decode="reduce-overhead")
    with caplog.at_level(logging.WARNING):
        active, fallbacks = resolve_profile(requested, CPU)
    assert (active.device, active.precision, active.num_streams) == ("cpu", "fp32", 1)
    assert active.compile_decode == "default"
    assert len(fallbacks) == 3 and len(caplog.records) == 3
    assert any("CUDA streams need a CUDA device" in str(f) for f in fallbacks)
    graphs_off = resolve_profile(EngineProfile(compile_decode="max-autotune"), CPU)[0]
    assert graphs_off.compile_decode == "default"


def test_cpu_runs_bf16_int4_and_nf4_on_its_own_kernels() -> None:
    requested = EngineProfile(precision="bf16", quantization="int4", compile_decode="default")
    active, fallbacks = resolve_profile(requested, CPU)
    assert fallbacks == []
    assert (active.precision, active.quantization, active.compile_decode) == (
        "bf16",
        "int4",
        "default",
    )
    assert resolve_profile(EngineProfile(quantization="nf4"), CPU_BNB)[0].quantization == "nf4"


def test_nf4_without_bitsandbytes_kernels_falls_back_to_int8() -> None:
    active, fallbacks = resolve_profile(
        EngineProfile(quantization="nf4", compile_decode="default"), CPU
    )
    assert active.quantization == "int8" and active.compile_decode == "none"
    assert (
        str(fallbacks[0])
        == "quantization: nf4 -> int8 (bitsandbytes 4-bit kernels are not available)"
    )


def test_auto_precision_follows_compute_capability() -> None:
    assert resolve_profile(EngineProfile(), RTX_4060)[0].precision == "bf16"
    assert resolve_profile(EngineProfile(), RTX_2080)[0].precision == "fp16"
    assert resolve_profile(EngineProfile(), CPU)[0].precision == "fp32"


def test_bf16_and_nf4_fall_back_where_the_gpu_lacks_them() -> None:
    requested = EngineProfile(precision="bf16", quantization="nf4", compile_decode="default")
    active, fallbacks = resolve_profile(requested, RTX_2080)
    assert active.precision == "fp16" and active.quantization == "int8"
    assert any("compute capability 8.0, this GPU has 7.5" in str(f) for f in fallbacks)
    assert any("bitsandbytes" in str(f) for f in fallbacks)
    assert resolve_profile(EngineProfile(quantization="nf4"), RTX_4060)[0].quantization == "nf4"


def test_cuda_int8_runs_only_compiled() -> None:
    """Eager, CUDA int8 would copy every weight to the float dtype per call (slower than bf16);
    compiled, inductor fuses that into the matmul. The grid records eager int8 as SKIPPED."""
    active, fallbacks = resolve_profile(EngineProfile(quantization="int8"), RTX_4060)
    assert active.quantization == "none"
    assert [str(f) for f in fallbacks] == [
        "quantization: int8 -> none (CUDA int8 is fast only compiled (inductor fuses its "
        "dequantization into the matmul); eager it copies every weight to the float dtype per "
        "call)"
    ]
    compiled = EngineProfile(quantization="int8", compile_decode="reduce-overhead")
    assert resolve_profile(compiled, RTX_4060) == (
        compiled.model_copy(
            update={
                "device": "cuda",
                "precision": "bf16",
                "codec_layout": "upstream",
                "codec_streaming": "context",
                "int8_kernel": "stock",
            }
        ),
        [],
    )


def test_cuda_int8_runs_only_in_its_fused_form() -> None:
    """Compiled without coordinate-descent tuning, inductor leaves the dequantization outside the
    matmul (a float copy of every weight per call, ~2.5x bf16's bytes): the tuning is switched on,
    with a note. On the CPU the choice stays the profile's."""
    unfused = EngineProfile(
        quantization="int8", compile_decode="default", coordinate_descent_tuning=False
    )
    active, fallbacks = resolve_profile(unfused, RTX_4060)
    assert (active.quantization, active.coordinate_descent_tuning) == ("int8", True)
    assert [(f.knob, f.asked, f.runs) for f in fallbacks] == [
        ("coordinate_descent_tuning", False, True)
    ]
    assert [str(f) for f in fallbacks] == [
        "coordinate_descent_tuning: False -> True (CUDA int8 is fused into the matmul only with "
        "inductor's coordinate-descent tuning; without it every call copies each weight to the "
        "float dtype)"
    ]
    cpu, _ = resolve_profile(unfused.model_copy(update={"precision": "bf16"}), CPU)
    assert (cpu.quantization, cpu.coordinate_descent_tuning) == ("int8", False)


def test_engine_reports_the_profile_that_actually_runs(engine) -> None:
    assert engine.active_profile.device == "cpu"
    assert engine.active_profile.precision == "fp32"


def test_cpu_dynamic_int8_runs_uncompiled() -> None:
    requested = EngineProfile(quantization="int8", compile_decode="default", compile_prefill=True)
    active, fallbacks = resolve_profile(requested, CPU)
    assert (active.compile_decode, active.compile_prefill) == ("none", False)
    assert all("dynamic-int8" in str(f) for f in fallbacks)
    weight_only = resolve_profile(requested.model_copy(update={"precision": "bf16"}), CPU)[0]
    assert weight_only.compile_decode == "default" and weight_only.compile_prefill
