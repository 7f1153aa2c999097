# syntax=docker/dockerfile:1.7
# v2server image: `docker build -t v2server .` (CPU torch), or for GPU nodes
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 --build-arg EXTRAS=gpu \
#     -t v2server:cu128 .
# CUDA torch wheels carry their CUDA libraries; the node's driver comes in through the NVIDIA container toolkit.
# EXTRAS=gpu adds nvidia-ml-py (NVML), which the nv_gpu_utilization gauge needs (pyproject.toml's gpu extra).

# ---- build: a virtual environment with torch (from the chosen index) and v2server ----
FROM python:3.11.14-slim-trixie AS build

# CPU wheels by default: the CUDA ones are gigabytes that CPU nodes never use.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# v2server's optional extras, comma-separated (pyproject.toml): none by default, "gpu" for the CUDA image.
ARG EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY v2server ./v2server
# A regular (non-editable) install: the source tree stays in this stage. torch is already satisfied.
RUN pip install "/src${EXTRAS:+[${EXTRAS}]}"

# ---- runtime: the same base, the virtual environment, an unprivileged user ----
FROM python:3.11.14-slim-trixie

LABEL org.opencontainers.image.title="v2server" \
      org.opencontainers.image.description="KServe V2 / Open Inference Protocol server for TorchScript models, Triton-compatible" \
      org.opencontainers.image.licenses="Apache-2.0"

# A passwd entry for uid 1000, so tools that ask for the user's name (getpass, torch's caches) get one.
RUN groupadd --gid 1000 v2server \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin v2server

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/v2server-entrypoint

# The root filesystem may be read-only (the Helm chart makes it so): everything writable lives under /tmp,
# an emptyDir in Kubernetes. Bytecode was compiled at install time, so none needs writing.
# NVIDIA_VISIBLE_DEVICES is deliberately not set: the device plugin sets it for pods that ask for GPUs, and
# baking "all" in would hand every GPU to pods that asked for none.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    CUDA_CACHE_PATH=/tmp/nv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /tmp
USER 1000:1000

# HTTP (V2 REST), gRPC, Prometheus metrics, as the default command and the Helm chart use them.
EXPOSE 8080 8081 8002

# No HEALTHCHECK: Kubernetes ignores it and probes /v2/health/live and /v2/health/ready itself.
ENTRYPOINT ["v2server-entrypoint"]
CMD ["v2server", "--model-repository", "/mnt/models", "--http-port", "8080", "--grpc-port", "8081", "--metrics-port", "8002"]
