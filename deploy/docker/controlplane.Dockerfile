# The control plane and the sidecar-injection webhook (both run `modelplane ...`).
# Build from the repository root:
#   docker build -f deploy/docker/controlplane.Dockerfile -t modelplane/controlplane:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python clients/python
COPY controlplane controlplane
COPY sidecar sidecar
RUN python -m venv /opt/modelplane \
    && /opt/modelplane/bin/pip install --no-cache-dir ".[controlplane]"

FROM python:3.11-slim-bookworm
RUN groupadd --gid 10001 modelplane \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin modelplane
COPY --from=build /opt/modelplane /opt/modelplane
ENV PATH=/opt/modelplane/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC, Prometheus metrics, webhook HTTPS.
EXPOSE 50051 9464 8443 8081
ENTRYPOINT ["modelplane"]
CMD ["controlplane", "serve"]
