# The inference sidecar on CPU nodes (ONNX Runtime picks the CPU provider).
# Build from the repository root:
#   docker build -f deploy/docker/sidecar.Dockerfile -t modelplane/sidecar:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python clients/python
COPY controlplane controlplane
COPY sidecar sidecar
RUN python -m venv /opt/modelplane \
    && /opt/modelplane/bin/pip install --no-cache-dir ".[sidecar]"

FROM python:3.11-slim-bookworm
RUN groupadd --gid 10001 modelplane \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin modelplane \
    && mkdir -p /var/log/modelplane /var/cache/modelplane \
    && chown 10001:10001 /var/log/modelplane /var/cache/modelplane
COPY --from=build /opt/modelplane /opt/modelplane
ENV PATH=/opt/modelplane/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/modelplane/numba
USER 10001:10001
# OIP gRPC, Prometheus metrics.
EXPOSE 8001 9465
ENTRYPOINT ["modelplane"]
CMD ["sidecar", "serve"]
