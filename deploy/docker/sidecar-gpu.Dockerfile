# The inference sidecar on GPU nodes: the CUDA 13 runtime with cuDNN 9, which
# onnxruntime-gpu 1.31's CUDA execution provider links against. The node needs an NVIDIA
# driver recent enough for CUDA 13 and the NVIDIA device plugin (nvidia.com/gpu).
# Build from the repository root:
#   docker build -f deploy/docker/sidecar-gpu.Dockerfile -t modelplane/sidecar-gpu:0.1.0 .
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python clients/python
COPY controlplane controlplane
COPY sidecar sidecar
RUN python3 -m venv /opt/modelplane \
    && /opt/modelplane/bin/pip install --no-cache-dir ".[sidecar]"

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 modelplane \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin modelplane \
    && mkdir -p /var/log/modelplane /var/cache/modelplane \
    && chown 10001:10001 /var/log/modelplane /var/cache/modelplane
COPY --from=build /opt/modelplane /opt/modelplane
ENV PATH=/opt/modelplane/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/modelplane/numba \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8001 9465
ENTRYPOINT ["modelplane"]
CMD ["sidecar", "serve"]
