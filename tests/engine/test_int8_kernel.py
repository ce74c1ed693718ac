"""The CPU int8 kernel (``fishbench::int8_gemv``): the float product with 15-bit activations at
the shapes a frame step and a prefill meet, prefills on AMX tiles giving the VNNI loop's bits, the
one kernel of an int8 layer that asks for it, one opaque op in a compiled graph, and profile
resolution falling back (to the VNNI loop, to torch's kernel), with the reason, wherever a path
cannot run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.model import int8_kernel
from engine.model.int8_kernel import int8_gemv
from engine.model.quantize import Int8Linear
from engine.profile import EngineProfile, Hardware, resolve_profile

CPU = Hardware("cpu", "cpu", None, False)
H100 = Hardware("cuda", "NVIDIA H100", (9, 0), False)
BF16_INT8 = {"precision": "bf16", "quantization": "int8"}
# Only a CPU without the instructions skips: a build that fails here fails these tests.
runs_here = pytest.mark.skipif(
    bool(int8_kernel.missing_cpu_flags()), reason="this CPU lacks AVX-512 VNNI"
)
# Only a CPU without AMX skips: a process Linux refuses the tile state fails them.
amx_here = pytest.mark.skipif(
    not set(int8_kernel.AMX_FLAGS) <= int8_kernel._cpu_flags(), reason="this CPU lacks AMX int8"
)


def _codes(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    codes = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    codes[0, :] = -128  # the extreme codes, where an unsigned offset or a saturation would show
    codes[-1, :] = 127
    return codes


class OpNames(TorchDispatchMode):
    """The ops a call dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@runs_here
@pytest.mark.parametrize("rows", [1, 3, 16, 150])  # 150: three passes of 64 rows
@pytest.mark.parametrize(("k", "n"), [(64, 4), (1024, 4096), (3072, 1024)])
def test_the_kernel_is_the_float_product_with_15_bit_activations(rows: int, k: int, n: int) -> None:
    """Each activation is kept to 2**-15 of its row's largest (two int8 digits), and the sums are
    fp32: the error stays within that bound, where one digit would be 128 times over it."""
    gen = torch.Generator().manual_seed(k + n + rows)
    codes = _codes(n, k, gen)
    scales = torch.rand(n, generator=gen) + 0.5
    x = torch.randn(rows, k, generator=gen)
    x[0, 0] = 0.0  # a zero, and below a row of one sign
    x[-1] = x[-1].abs()
    weights = codes.double() * scales.double()[:, None]
    exact = x.double() @ weights.T
    out = int8_gemv(x, codes, codes.sum(1, dtype=torch.int32), scales, False)
    assert out.dtype == torch.float32 and out.shape == (rows, n)
    digits = x.abs().amax(1, keepdim=True).double() * 2**-15 * weights.abs().sum(1)
    sums = 1e-6 * x.double().abs() @ weights.abs().T
    assert ((out.double() - exact).abs() <= digits + sums).all()


@amx_here
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [2, 37, 150, 300])  # 300: passes of 128 rows and a ragged tail
@pytest.mark.parametrize(("k", "n"), [(64, 32), (1024, 4096), (3072, 1024)])
def test_amx_tiles_give_the_vnni_loops_bits_from_two_rows_on(
    rows: int, k: int, n: int, dtype: torch.dtype
) -> None:
    """Both paths meet the same digits in exact integer sums and share the epilogue."""
    gen = torch.Generator().manual_seed(k + n + rows)
    codes = _codes(n, k, gen)
    scales = (torch.rand(n, generator=gen) + 0.5).to(dtype)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    rowsum = codes.sum(1, dtype=torch.int32)
    vnni = int8_gemv(x, codes, rowsum, scales, False)
    before = int8_kernel.amx_calls()
    amx = int8_gemv(x, codes, rowsum, scales, True)
    assert int8_kernel.amx_calls() == before + 1
    assert torch.equal(amx, vnni)


@amx_here
@pytest.mark.parametrize(("rows", "n"), [(1, 1024), (64, 1000)])
def test_steps_and_shapes_the_tiles_cannot_take_stay_on_the_vnni_loop(rows: int, n: int) -> None:
    """At one row (a frame step) the loop reads the weights faster; tiles take 32 rows at once."""
    gen = torch.Generator().manual_seed(rows)
    codes = _codes(n, 128, gen)
    x = torch.randn(rows, 128, generator=gen)
    before = int8_kernel.amx_calls()
    int8_gemv(x, codes, codes.sum(1, dtype=torch.int32), torch.ones(n), True)
    assert int8_kernel.amx_calls() == before


@runs_here
def test_a_bf16_step_matches_torchs_kernel_to_bf16_rounding() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 3072, bias=False).to(torch.bfloat16)
    ours, stock = Int8Linear(layer, "vnni"), Int8Linear(layer, "stock")
    x = torch.randn(1, 1, 1024, dtype=torch.bfloat16)
    exact = x.double() @ (stock.weight.double() * stock.scales.double()[:, None]).T
    for out in (ours(x), stock(x)):
        assert out.dtype == torch.bfloat16 and out.shape == (1, 1, 3072)
        assert ((out.double() - exact).norm() / exact.norm()).item() < 4e-3  # bf16: 2**-8


@runs_here
@pytest.mark.parametrize(("kernel", "rows", "op"), [
    ("vnni", 1, "fishbench.int8_gemv"),
    ("vnni", 200, "fishbench.int8_gemv"),  # a prefill
    ("amx", 1, "fishbench.int8_gemv"),
    ("amx", 200, "fishbench.int8_gemv"),
    ("stock", 1, "aten._weight_int8pack_mm"),
    ("stock", 200, "aten._weight_int8pack_mm"),
])  # fmt: skip
def test_an_int8_layer_runs_every_row_count_on_the_kernel_it_was_given(
    kernel: str, rows: int, op: str
) -> None:
    layer = Int8Linear(torch.nn.Linear(128, 64).to(torch.bfloat16), kernel)
    with OpNames() as seen:
        layer(torch.randn(rows, 128, dtype=torch.bfloat16))
    assert op in seen.names
    assert {"fishbench.int8_gemv", "aten._weight_int8pack_mm"} & set(seen.names) == {op}


@pytest.mark.parametrize("kernel", ["vnni", "amx"])
def test_a_layer_the_kernel_cannot_take_stays_on_aten(kernel: str) -> None:
    assert Int8Linear(torch.nn.Linear(100, 64).to(torch.bfloat16), kernel).kernel == "stock"
    assert Int8Linear(torch.nn.Linear(128, 6).to(torch.bfloat16), kernel).kernel == "stock"


@runs_here
def test_a_compiled_step_calls_the_kernel_in_one_graph_as_eager_does() -> None:
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(256, 128).to(torch.bfloat16), "amx")
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    graphs: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm.code)
        return gm.forward

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    assert torch.equal(compiled(x), layer(x))
    assert len(graphs) == 1 and "fishbench.int8_gemv" in graphs[0]


def _flags(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> Iterator[None]:
    monkeypatch.setattr(int8_kernel, "_cpu_flags", lambda: flags)
    int8_kernel.problem.cache_clear()
    int8_kernel.amx_problem.cache_clear()
    yield
    int8_kernel.problem.cache_clear()
    int8_kernel.amx_problem.cache_clear()


@pytest.fixture
def cpu_without_vnni(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from _flags(monkeypatch, {"avx2", "avx512f"})


@pytest.fixture
def cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from _flags(monkeypatch, set(int8_kernel.NEEDED_FLAGS))


@amx_here
def test_auto_runs_cpu_bf16_int8_on_the_kernel_with_amx_prefills_where_it_can() -> None:
    profile, fallbacks = resolve_profile(EngineProfile(**BF16_INT8), CPU)
    assert profile.int8_kernel == "amx" and not fallbacks


@runs_here
@pytest.mark.usefixtures("cpu_without_amx")
def test_a_cpu_without_amx_runs_prefills_on_the_vnni_loop_and_says_why() -> None:
    profile, fallbacks = resolve_profile(EngineProfile(**BF16_INT8), CPU)
    assert profile.int8_kernel == "vnni" and not fallbacks
    profile, fallbacks = resolve_profile(EngineProfile(**BF16_INT8, int8_kernel="amx"), CPU)
    assert profile.int8_kernel == "vnni"
    assert [str(f) for f in fallbacks] == [
        "int8_kernel: amx -> vnni (this CPU lacks amx_tile, amx_int8)"
    ]


@pytest.mark.usefixtures("cpu_without_vnni")
@pytest.mark.parametrize("asked", ["vnni", "amx"])
def test_a_cpu_without_vnni_runs_torchs_kernel_and_says_why(asked: str) -> None:
    assert resolve_profile(EngineProfile(**BF16_INT8), CPU)[0].int8_kernel == "stock"
    profile, fallbacks = resolve_profile(EngineProfile(**BF16_INT8, int8_kernel=asked), CPU)
    assert profile.int8_kernel == "stock"
    assert [str(f) for f in fallbacks] == [
        f"int8_kernel: {asked} -> stock (this CPU lacks avx512bw, avx512_vnni)"
    ]


@pytest.mark.parametrize(("hardware", "knobs", "why"), [
    (H100, {**BF16_INT8, "compile_decode": "default"}, "CUDA int8 is inductor's fused form"),
    (CPU, {"precision": "fp32", "quantization": "int8"}, "dynamic quantization"),
    (CPU, {"precision": "bf16", "quantization": "int4"}, "serves int8 weights"),
])  # fmt: skip
def test_the_kernel_is_asked_for_only_where_it_applies(
    hardware: Hardware, knobs: dict, why: str
) -> None:
    assert resolve_profile(EngineProfile(**knobs), hardware)[0].int8_kernel == "stock"
    profile, fallbacks = resolve_profile(EngineProfile(**knobs, int8_kernel="amx"), hardware)
    assert profile.int8_kernel == "stock"
    assert [f.knob for f in fallbacks if why in f.reason] == ["int8_kernel"]
