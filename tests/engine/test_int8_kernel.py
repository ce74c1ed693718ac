"""The CPU int8 VNNI kernel (``fishbench::int8_gemv``): the float product with 15-bit activations
at the shapes a frame step and a prefill meet, the one kernel of an int8 layer that asks for it,
one opaque op in a compiled graph, and profile resolution falling back to torch's kernel, with the
reason, wherever it cannot run."""

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
    out = int8_gemv(x, codes, codes.sum(1, dtype=torch.int32), scales)
    assert out.dtype == torch.float32 and out.shape == (rows, n)
    digits = x.abs().amax(1, keepdim=True).double() * 2**-15 * weights.abs().sum(1)
    sums = 1e-6 * x.double().abs() @ weights.abs().T
    assert ((out.double() - exact).abs() <= digits + sums).all()


@runs_here
def test_a_bf16_step_matches_torchs_kernel_to_bf16_rounding() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 3072, bias=False).to(torch.bfloat16)
    ours, stock = Int8Linear(layer, vnni=True), Int8Linear(layer, vnni=False)
    x = torch.randn(1, 1, 1024, dtype=torch.bfloat16)
    exact = x.double() @ (stock.weight.double() * stock.scales.double()[:, None]).T
    for out in (ours(x), stock(x)):
        assert out.dtype == torch.bfloat16 and out.shape == (1, 1, 3072)
        assert ((out.double() - exact).norm() / exact.norm()).item() < 4e-3  # bf16: 2**-8


@runs_here
@pytest.mark.parametrize(("vnni", "rows", "op"), [
    (True, 1, "fishbench.int8_gemv"),
    (True, 200, "fishbench.int8_gemv"),  # a prefill
    (False, 1, "aten._weight_int8pack_mm"),
    (False, 200, "aten._weight_int8pack_mm"),
])  # fmt: skip
def test_an_int8_layer_runs_every_row_count_on_the_kernel_it_was_given(
    vnni: bool, rows: int, op: str
) -> None:
    layer = Int8Linear(torch.nn.Linear(128, 64).to(torch.bfloat16), vnni=vnni)
    with OpNames() as seen:
        layer(torch.randn(rows, 128, dtype=torch.bfloat16))
    assert op in seen.names
    assert {"fishbench.int8_gemv", "aten._weight_int8pack_mm"} & set(seen.names) == {op}


def test_a_layer_the_kernel_cannot_take_stays_on_aten() -> None:
    assert not Int8Linear(torch.nn.Linear(100, 64).to(torch.bfloat16), vnni=True).vnni
    assert not Int8Linear(torch.nn.Linear(128, 6).to(torch.bfloat16), vnni=True).vnni


@runs_here
def test_a_compiled_step_calls_the_kernel_in_one_graph_as_eager_does() -> None:
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(256, 128).to(torch.bfloat16), vnni=True)
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    graphs: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm.code)
        return gm.forward

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    assert torch.equal(compiled(x), layer(x))
    assert len(graphs) == 1 and "fishbench.int8_gemv" in graphs[0]


@pytest.fixture
def cpu_without_vnni(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(int8_kernel, "_cpu_flags", lambda: {"avx2", "avx512f"})
    int8_kernel.problem.cache_clear()
    yield
    int8_kernel.problem.cache_clear()


@runs_here
def test_auto_runs_cpu_bf16_int8_on_the_kernel_where_it_can() -> None:
    profile, fallbacks = resolve_profile(EngineProfile(**BF16_INT8), CPU)
    assert profile.int8_kernel == "vnni" and not fallbacks


@pytest.mark.usefixtures("cpu_without_vnni")
def test_a_cpu_without_vnni_runs_torchs_kernel_and_says_why() -> None:
    assert resolve_profile(EngineProfile(**BF16_INT8), CPU)[0].int8_kernel == "stock"
    profile, fallbacks = resolve_profile(EngineProfile(**BF16_INT8, int8_kernel="vnni"), CPU)
    assert profile.int8_kernel == "stock"
    assert [str(f) for f in fallbacks] == [
        "int8_kernel: vnni -> stock (this CPU lacks avx512bw, avx512_vnni)"
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
    profile, fallbacks = resolve_profile(EngineProfile(**knobs, int8_kernel="vnni"), hardware)
    assert profile.int8_kernel == "stock"
    assert [f.knob for f in fallbacks if why in f.reason] == ["int8_kernel"]
