"""What one decoded frame does at the aten level: fused grouped attention without K/V copies, no
host syncs, fixed tensor addresses, and a compiled graph that CUDA graphs can capture.

Ops are recorded with a ``TorchDispatchMode`` that also decomposes composite ops (``linear``,
``scaled_dot_product_attention``, ...), so the kernels they pick are recorded too. A tensor an op
returns is *new* when its storage is none of the op's inputs' storages: not a view, not written
in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
import torch
from fish_speech.models.text2semantic.llama import (
    Attention,
    DualARModelArgs,
    KVCache,
    precompute_freqs_cis,
)
from functorch.compile import make_boxed_func
from torch import Tensor
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters
from torch._functorch._aot_autograd.autograd_cache import BypassAOTAutogradCache, check_cacheable
from torch._inductor.cudagraph_utils import (
    FunctionID,
    WrappedFunction,
    check_for_mutation,
    check_for_mutation_ignore_cuda_graph_managed_tensor,
    get_placeholder_info,
)
from torch._inductor.output_code import complex_memory_overlap
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from engine import dual_ar
from engine.compile_cache import inductor_settings
from engine.engine import OptimizedFishSpeech
from engine.generation import SemanticDecoder
from engine.model.synthetic import S1_MINI_CONFIG
from engine.profile import EngineProfile, kv_bucket
from engine.sampling import SamplingParams

FUSED_CPU_SDPA = "aten._scaled_dot_product_flash_attention_for_cpu"
MATH_SDPA = "aten._scaled_dot_product_attention_math"
KV_EXPANSION = "aten.repeat_interleave"
HOST_SYNCS = {
    "aten._local_scalar_dense",
    "aten.nonzero",
    "aten.item",
    "aten.equal",
    "aten.is_nonzero",
}
# Long enough that the prompt alone needs the 512 bucket (~300 tokens with the tiny tokenizer).
LONG_TEXT = " ".join(["A much longer sentence than the first one, with many more words."] * 7)


@dataclass(frozen=True)
class Output:
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    new: bool  # storage is none of the op's inputs' (not a view, not an in-place result)


@dataclass(frozen=True)
class OpCall:
    op: str  # overload packet, e.g. "aten.mm"
    outputs: tuple[Output, ...]


class OpRecorder(TorchDispatchMode):
    """Records every aten op run under it, with its tensor outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[OpCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = NotImplemented
        if func.namespace == "aten":
            with self:  # record what a composite op runs (SDPA's kernel choice among them)
                out = func.decompose(*args, **kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
        inputs = {
            StorageWeakRef(t.untyped_storage())
            for t in tree_leaves((args, kwargs))
            if isinstance(t, Tensor)
        }
        outputs = tuple(
            Output(
                tuple(t.shape),
                t.dtype,
                t.numel() * t.element_size(),
                StorageWeakRef(t.untyped_storage()) not in inputs,
            )
            for t in tree_leaves(out)
            if isinstance(t, Tensor)
        )
        self.calls.append(OpCall(str(func.overloadpacket), outputs))
        return out

    @property
    def ops(self) -> set[str]:
        return {call.op for call in self.calls}

    def new_tensors(self) -> Iterator[tuple[str, Output]]:
        for call in self.calls:
            for out in call.outputs:
                if out.new:
                    yield call.op, out


def assert_fused_attention_without_kv_copies(rec: OpRecorder, k_slice: Tensor) -> None:
    """(a) the fused CPU SDPA kernel runs, never the math fallback nor a K/V expansion;
    (b) no new tensor is larger than one layer's K slice; (c) no new fp32 tensor is K-sized."""
    assert MATH_SDPA not in rec.ops
    assert KV_EXPANSION not in rec.ops
    assert FUSED_CPU_SDPA in rec.ops, sorted(rec.ops)
    slice_bytes = k_slice.numel() * k_slice.element_size()
    too_big = [(op, out) for op, out in rec.new_tensors() if out.nbytes > slice_bytes]
    assert not too_big, f"new tensors larger than a K slice ({slice_bytes} B): {too_big[:5]}"
    fp32_kv = [
        (op, out)
        for op, out in rec.new_tensors()
        if out.dtype == torch.float32 and out.nbytes // 4 >= k_slice.numel()
    ]
    assert not fp32_kv, f"fp32 tensors as large as K: {fp32_kv[:5]}"


def prime(engine: OptimizedFishSpeech, frames: int = 4) -> tuple[Tensor, Tensor, int]:
    """Fill the caches with one short request; the next step's (frame, input_pos, kv_len).

    The step inputs are made under inference mode, as ``generate`` makes them (an inference
    tensor and a normal one are different guards for a compiled step).
    """
    dec = engine.decoder
    prompt = engine.build_prompt("Hello there.", None, None)
    bucket = kv_bucket(prompt.shape[1] + frames, dec.max_seq_len)
    list(dec.generate(prompt, SamplingParams(seed=0), frames, fixed_frames=frames))
    with torch.inference_mode():
        frame = torch.zeros(1 + dec.num_codebooks, 1, dtype=torch.long)
        frame[0] = dec.semantic_begin
        input_pos = torch.tensor([prompt.shape[1] + frames - 1])
    return frame, input_pos, bucket


def trace_step(dec: SemanticDecoder, frame: Tensor, input_pos: Tensor, kv_len: int) -> OpRecorder:
    with torch.inference_mode(), OpRecorder() as rec:
        dec.decode_step(frame, input_pos, kv_len)
    return rec


@pytest.fixture(scope="module")
def bf16_engine(tiny_checkpoint: Path) -> OptimizedFishSpeech:
    return OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(precision="bf16"))


def test_bf16_step_runs_fused_attention_without_copying_kv(bf16_engine) -> None:
    """One bf16 frame step: flash SDPA over the grouped heads, K/V only ever read in place."""
    dec = bf16_engine.decoder
    frame, input_pos, kv_len = prime(bf16_engine)
    rec = trace_step(dec, frame, input_pos, kv_len)
    k_cache = dec.model.layers[0].attention.kv_cache.k_cache
    assert k_cache.dtype == torch.bfloat16
    assert_fused_attention_without_kv_copies(rec, k_cache[:, :, :kv_len])


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def test_full_size_s1_mini_attention_is_fused_without_kv_copies() -> None:
    """A real-size S1-mini attention layer (fake tensors: no weights, no memory) over a 4096
    position cache, attending over 2048: same kernel and the same absence of K/V copies."""
    cfg = DualARModelArgs(**S1_MINI_CONFIG)
    kv_len = 2048
    with FakeTensorMode(), torch.device("cpu"), default_dtype(torch.bfloat16):
        attn = Attention(cfg)
        attn.kv_cache = KVCache(1, 4096, cfg.n_local_heads, cfg.head_dim, dtype=torch.bfloat16)
        causal_mask = torch.tril(torch.ones(4096, 4096, dtype=torch.bool))
        freqs_cis = precompute_freqs_cis(4096, cfg.head_dim, cfg.rope_base)
        x = torch.randn(1, 1, cfg.dim)
        with torch.inference_mode():
            input_pos = torch.tensor([kv_len - 1])
            with OpRecorder() as rec:
                mask = causal_mask[None, None, input_pos, :kv_len]
                y = dual_ar.attention(attn, x, freqs_cis[input_pos], mask, input_pos, kv_len)
    assert y.shape == (1, 1, cfg.dim) and y.dtype == torch.bfloat16
    k_cache = attn.kv_cache.k_cache
    assert tuple(k_cache.shape) == (1, cfg.n_local_heads, 4096, cfg.head_dim)
    assert_fused_attention_without_kv_copies(rec, k_cache[:, :, :kv_len])


def test_step_never_syncs_with_the_host(engine) -> None:
    """A host read-back (``.item()``, ``nonzero``, ...) would stall every frame and cannot be
    captured in a CUDA graph."""
    frame, input_pos, kv_len = prime(engine)
    rec = trace_step(engine.decoder, frame, input_pos, kv_len)
    assert "aten.linear" in rec.ops  # the recorder saw the step
    assert not rec.ops & HOST_SYNCS, sorted(rec.ops & HOST_SYNCS)


def state_addresses(module: torch.nn.Module) -> dict[str, int]:
    return {
        name: t.data_ptr() for name, t in chain(module.named_parameters(), module.named_buffers())
    }


def test_step_state_keeps_its_addresses_across_requests_and_buckets(engine) -> None:
    """Every tensor the step reads or writes (KV caches, sampling state, heads, weights) stays
    where it is: a captured CUDA graph replays against fixed addresses."""
    dec = engine.decoder
    model = dec.model
    engine.semantic_cache.clear()
    before = state_addresses(dec)
    caches = [layer.attention.kv_cache for layer in chain(model.layers, model.fast_layers)]
    for t in chain(*((c.k_cache, c.v_cache) for c in caches)):
        assert t.data_ptr() in before.values()
    for name in ("window", "settings", "eos_bias", "slow_head", "fast_head"):
        assert before[name] == getattr(dec, name).data_ptr()

    engine.synthesize("Hello there.", fixed_frames=6, seed=11)
    first = engine.last_report.kv_bucket
    engine.synthesize(LONG_TEXT, fixed_frames=8, seed=12, temperature=0.5, top_p=0.9)
    assert (first, engine.last_report.kv_bucket) == (256, 512)
    after = state_addresses(dec)
    moved = sorted(name for name in before if after.get(name) != before[name])
    assert not moved and after.keys() == before.keys(), moved


@dataclass
class CapturedStep:
    dynamo_inputs: list[Tensor]
    placeholders: list[torch.fx.Node]
    aot_graph: torch.fx.GraphModule | None = None
    static_input_idxs: list[int] | None = None
    mutated_input_idxs: list[int] | None = None


def test_compiled_step_graph_passes_inductors_cudagraph_checks(engine) -> None:
    """The step's graph as inductor's CUDA-graph path sees it, taken from aot_autograd (the
    inference graph inductor would lower, with ``static_input_indices`` and mutation metadata),
    without generating code:

    * the only non-static inputs are ``frame`` and ``input_pos``; every other input is a
      parameter or buffer of the decoder (a fixed address), KV caches included;
    * only the KV caches and the repetition window are written in place, and inductor's own
      mutation checks (``check_for_mutation`` for CUDA-graph trees, and the variant used when
      input mutation support is off) report nothing;
    * no input has complex memory overlap, and all inputs are tensors (inductor's other
      per-graph conditions).

    ``check_multiple_devices_or_any_cpu_nodes`` is not applied: on this CPU graph it would
    rightly report CPU nodes; the graph has no device transfers or host syncs either way.
    """
    frame, input_pos, kv_len = prime(engine)
    dec = engine.decoder
    names, mutated = capture_for_cudagraphs(dec, dec.decode_step, frame, input_pos, kv_len)
    assert names.dynamic == ["L['frame']", "L['input_pos']"]
    caches = [name for name in names.all if name.endswith(("kv_cache.k_cache", "kv_cache.v_cache"))]
    assert len(caches) == 2 * (len(dec.model.layers) + len(dec.model.fast_layers))
    assert mutated == {*caches, "window"}


@pytest.mark.parametrize("function", ["decode_step", "prefill"])
def test_compiled_graphs_are_ones_aotautograds_cache_keeps(engine, function: str) -> None:
    """A graph AOTAutograd's cache bypasses is re-traced through AOTAutograd at every warm start
    (at full size about a third of it). ``sdpa_kernel`` puts torch functions into the graph that
    its safety check does not know; the engine's inductor settings mark them, and the check
    passes on the step's and the prefill's graphs as dynamo hands them to inductor."""
    frame, input_pos, kv_len = prime(engine)
    dec = engine.decoder
    if function == "prefill":
        prompt = engine.build_prompt("Hello there.", None, None)
        frame, input_pos = prompt, torch.arange(prompt.shape[1])
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(getattr(dec, function), backend=backend, fullgraph=True)
    with torch.inference_mode():
        compiled(frame, input_pos, kv_len)
    settings = inductor_settings(engine.active_profile)
    inductor = {k.removeprefix("inductor."): v for k, v in settings.items() if "inductor." in k}
    with torch._inductor.config.patch(inductor):
        check_cacheable(graphs[0])
    unmarked = {**inductor, "unsafe_marked_cacheable_functions": {}}
    with (
        torch._inductor.config.patch(unmarked),
        pytest.raises(BypassAOTAutogradCache, match="torch.nn.attention"),
    ):
        check_cacheable(graphs[0])


@dataclass
class InputNames:
    all: list[str]  # module state by its attribute path, others by dynamo source (L['frame'])
    dynamic: list[str]  # the inputs that are not static (inductor copies them into a graph)


def capture_for_cudagraphs(
    module: torch.nn.Module, fn: Any, *args: Any
) -> tuple[InputNames, set[str]]:
    """Compile ``fn(*args)`` up to aot_autograd's inference graph, run inductor's CUDA-graph
    checks on it (mutation, memory overlap, static inputs that are ``module`` state) and return
    its input names and the names of the inputs it writes in place."""
    captured: list[CapturedStep] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]):
        step = CapturedStep(list(example_inputs), list(gm.graph.find_nodes(op="placeholder")))
        captured.append(step)

        def inference_compiler(aot_gm: torch.fx.GraphModule, aot_inputs):
            meta = torch._guards.TracingContext.get().fw_metadata
            step.aot_graph = aot_gm
            step.static_input_idxs = list(meta.static_input_indices)
            step.mutated_input_idxs = [
                i
                for i, info in enumerate(meta.input_info)
                if info.mutates_data or info.mutates_metadata or info.mutates_storage_metadata
            ]
            return make_boxed_func(aot_gm.forward)

        return aot_autograd(fw_compiler=inference_compiler, keep_inference_input_mutations=True)(
            gm, example_inputs
        )

    torch._dynamo.reset()
    step_fn = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        step_fn(*args)
    (step,) = captured
    assert step.aot_graph is not None and step.static_input_idxs is not None
    inputs = step.dynamo_inputs
    aot_placeholders = list(step.aot_graph.graph.find_nodes(op="placeholder"))
    assert len(aot_placeholders) == len(inputs) == len(step.placeholders)

    state = {ptr: name for name, ptr in state_addresses(module).items()}
    names = [
        state.get(t.data_ptr(), node._dynamo_source.name)
        for t, node in zip(inputs, step.placeholders, strict=True)
    ]
    dynamic = [names[i] for i in range(len(inputs)) if i not in step.static_input_idxs]
    not_state = [names[i] for i in step.static_input_idxs if inputs[i].data_ptr() not in state]
    assert not not_state, f"static inputs that are no parameter or buffer: {not_state}"

    wrapped = WrappedFunction(
        model=step.aot_graph,
        static_input_idxs=step.static_input_idxs,
        id=FunctionID(0),
        constants=(),
        placeholders=get_placeholder_info(step.aot_graph.graph),
        mutated_input_idxs=step.mutated_input_idxs,
    )
    assert check_for_mutation(wrapped, inputs, lambda t: False) is None
    mutated_names = {aot_placeholders[i].name for i in step.mutated_input_idxs}
    reason = check_for_mutation_ignore_cuda_graph_managed_tensor(
        step.aot_graph, mutated_names, step.mutated_input_idxs, step.static_input_idxs
    )
    assert reason is None
    assert all(isinstance(t, Tensor) and not complex_memory_overlap(t) for t in inputs)
    return InputNames(names, dynamic), {names[i] for i in step.mutated_input_idxs}


@pytest.fixture(scope="module")
def batched_engine(tiny_checkpoint: Path) -> Iterator[OptimizedFishSpeech]:
    """A max_batch 4 engine after one request, whose slot 0 is left where it ended."""
    engine = OptimizedFishSpeech.from_checkpoint(tiny_checkpoint, EngineProfile(max_batch=4))
    engine.synthesize(LONG_TEXT, fixed_frames=6, seed=3)
    yield engine
    engine.close()


def test_batched_step_reads_kv_in_place_and_never_syncs(batched_engine) -> None:
    """Four rows at once, each at its own position: fused grouped attention over the slot
    caches' views, each new K/V written in place, no host read-back."""
    state = batched_engine.batcher.state
    state.input_pos[:4] = torch.tensor([[300], [40], [7], [511]])
    with torch.inference_mode(), OpRecorder() as rec:
        state.step(4, 512)
    assert not rec.ops & HOST_SYNCS, sorted(rec.ops & HOST_SYNCS)
    k_cache = state.slot_caches()[0].k_cache
    assert_fused_attention_without_kv_copies(rec, k_cache[:4, :, :512])


def test_compiled_batched_step_passes_inductors_cudagraph_checks(batched_engine) -> None:
    """The batched step reads nothing but the scheduler's state (every input static: a CUDA
    graph per batch size and bucket replays with no copies in) and writes only the slot
    caches and the repetition window."""
    state = batched_engine.batcher.state
    names, mutated = capture_for_cudagraphs(state, state.step, 4, 512)
    assert names.dynamic == []
    caches = [n for n in names.all if n.endswith(("slot_cache.k_cache", "slot_cache.v_cache"))]
    model = batched_engine.decoder.model
    assert len(caches) == 2 * (len(model.layers) + len(model.fast_layers))
    assert mutated == {*caches, "window"}


def test_compiled_step_is_one_graph_per_kv_bucket(engine) -> None:
    """A new bucket compiles a new static graph; the next frame in a known bucket compiles
    nothing (the step advances ``input_pos`` in place, as ``generate`` does)."""
    frame, input_pos, kv_len = prime(engine)
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(engine.decoder.decode_step, backend="eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        frame.copy_(step(frame, input_pos, kv_len))
        assert counters["stats"]["unique_graphs"] == 1
        step(frame, input_pos, 2 * kv_len)
        assert counters["stats"]["unique_graphs"] == 2
        input_pos += 1
        frame.copy_(step(frame, input_pos, kv_len))
        assert counters["stats"]["unique_graphs"] == 2
