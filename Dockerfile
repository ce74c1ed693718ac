# fishbench API (and UI) image. Not built in CI: the development machine has no Docker engine.
# The torch wheels bring their own CUDA libraries; the CUDA runtime base supplies the driver glue.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    UV_PYTHON=3.11 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libsndfile1 \
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
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health', timeout=4)"
CMD ["python", "-m", "serving"]
