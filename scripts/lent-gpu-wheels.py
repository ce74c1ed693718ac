"""Print ``name==version`` of every distribution the GPU check imports that a lent GPU machine
lacks: what to ``pip download`` here and carry there (docs/measuring.md, "On a lent GPU").

The list of what such a machine holds is a fact about those machines (read off one in 2026-11),
not about fishbench, so it lives here and not in the product.
"""

from __future__ import annotations

import importlib
import re
import sys
from importlib import metadata

_LENT_GPU_HAS = """
torch torchaudio triton numpy scipy sympy mpmath pyyaml tiktoken regex psutil nvidia-ml-py
packaging filelock fsspec jinja2 markupsafe pillow protobuf tqdm typing-extensions rich
markdown-it-py mdurl pygments einops transformers tokenizers huggingface-hub safetensors
tensorboard tensorboard-data-server absl-py grpcio markdown werkzeug setuptools six requests
urllib3 idna certifi charset-normalizer httpx httpcore h11 anyio attrs click lazy-loader numba
llvmlite scikit-learn joblib threadpoolctl matplotlib cycler kiwisolver fonttools contourpy
pyparsing python-dateutil hf-xet annotated-doc
"""
LENT_GPU_HAS = frozenset(_LENT_GPU_HAS.split())
STEP_MODULES = (
    "engine.engine",
    "engine.model.synthetic",
    "harness.bench.run",
    "harness.gpu_check.steps",
    "harness.quality.fidelity_report",
    "torchao",
)


def wheel_list() -> list[str]:
    for module in STEP_MODULES:
        importlib.import_module(module)
    owners = metadata.packages_distributions()
    names = {
        dist
        for top in {name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
        for dist in owners.get(top, [])
    }
    wanted = {
        metadata.metadata(name)["Name"]: metadata.version(name)
        for name in names
        if re.sub(r"[-_.]+", "-", name.lower()) not in LENT_GPU_HAS
        and not name.lower().startswith(("nvidia-", "cuda-"))
    }
    return sorted(f"{name}=={version}" for name, version in wanted.items())


if __name__ == "__main__":
    print(" ".join(wheel_list()))
