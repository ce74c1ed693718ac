# fishbench API (and UI) image. Not built in CI: the development machine has no Docker engine
# (tests/test_docker_image.py checks this file against uv.lock instead).
# The locked torch 2.11 wheels are CUDA 13.0 builds (+cu130) and bring their own CUDA libraries;
# the base image matches that CUDA major, so the host needs NVIDIA driver 580 or newer (CUDA 13.0).
# Older drivers: see the README, "Installing torch for your driver".
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    UV_PYTHON=3.11 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    COMPILE_CACHE_DIR=/data/compile-cache \
    TORCH_EXTENSIONS_DIR=/data/compile-cache/torch-extensions

# gcc + libc6-dev: Triton compiles its kernel launcher with the C compiler at run time (against
# Python.h, which uv's managed Python ships), so every compiled profile needs them in the image.
# g++: inductor's CPU kernels are C++ (a compiled profile on a CPU, and the codec's CPU parts), and
# so is the CPU int8 kernel, built at the first start and kept on the compile-cache volume.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libsndfile1 gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.8 /uv /usr/local/bin/uv

WORKDIR /app
# Dependencies first (cached while only the source changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY engine engine
COPY harness harness
COPY serving serving
COPY ui ui
COPY conf conf
COPY public public
RUN uv sync --frozen --no-dev

RUN useradd --create-home --uid 1000 fishbench \
    && mkdir -p checkpoints reports voices /data \
    && chown -R fishbench:fishbench /app /data
USER fishbench

EXPOSE 8000
# A compiled profile's first start compiles every KV bucket's frame step and every codec decode
# length (docs/operations.md: about 10-20 min cold on a desktop GPU, projected; 1-2 min warm from
# the compile cache, which docker-compose.yml keeps on a volume): /health answers 503 "loading"
# until then, and only failures after the start period count.
VOLUME /data/compile-cache
HEALTHCHECK --interval=15s --timeout=5s --start-period=1500s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health', timeout=4)"
CMD ["python", "-m", "serving"]
