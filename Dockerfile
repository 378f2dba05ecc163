# syntax=docker/dockerfile:1
# hsmlb image: a builder stage makes the wheel (its build_py hook compiles proto/ into hsmlb/v1) and a
# venv in /opt/venv; the runtime stage has SoftHSM2, the venv and nothing else, and runs as a non-root user.
#
#   docker build -t hsmlb .
#   docker run --rm -p 127.0.0.1:50051:50051 hsmlb          # embedded dev cluster (public test keys only)
#
# Production does not use the dev cluster: mount a real config (and the PKCS#11 module, PIN file or
# PIN environment variable it names) and run `serve`, e.g.
#   docker run -v /etc/hsmlb:/etc/hsmlb:ro hsmlb serve --config /etc/hsmlb/hsmlb.yaml
# Use `docker run --init` (or an init in the orchestrator) so PID 1 reaps stray processes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------------ builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY proto/ proto/
COPY hsmlb/ hsmlb/
# Every dependency ships manylinux wheels (amd64 and arm64), so no compiler is needed.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/hsmlb-*.whl \
 && cd / && /opt/venv/bin/python -c "import hsmlb.server, hsmlb.v1.hsmlb_pb2, hsmlb.v1.hsmlb_pb2_grpc; \
from hsmlb.dev.cluster import default_keys_file; from hsmlb.keys import load_keys; load_keys(default_keys_file())"

# ------------------------------------------------------------------------------------------ runtime
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 hsmlb \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/hsmlb --shell /usr/sbin/nologin hsmlb
COPY --from=builder /opt/venv /opt/venv
# `hsmlb dev up` reads its default keys file from the installed package (hsmlb/dev/dev-keys.yaml).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/hsmlb
USER hsmlb:hsmlb
EXPOSE 50051

# gRPC health service (grpc.health.v1.Health/Check, overall service ""): exit 0 only when SERVING;
# NOT_SERVING, connection refused or a timeout exit 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:50051', options=[('grpc.enable_http_proxy', 0)]); r = g.HealthStub(ch).Check(h.HealthCheckRequest(service=''), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["hsmlb"]
# Embedded dev cluster: SoftHSM2 tokens with public test keys under /home/hsmlb/dev, then the daemon.
# Production overrides this with `serve --config FILE` on a mounted config (see the top of this file).
CMD ["dev", "up", "--state-dir", "/home/hsmlb/dev", "--listen", "0.0.0.0:50051", "--serve"]
