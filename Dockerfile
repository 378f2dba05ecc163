# syntax=docker/dockerfile:1
# hsmlb image: a builder stage makes the wheel (its build_py hook compiles proto/ into hsmlb/v1) and a
# venv in /opt/venv; the runtime stage has SoftHSM2, the venv and nothing else, and runs as a non-root user.
#
#   docker build -t hsmlb .
#   docker run --rm hsmlb          # embedded dev cluster (public test keys only), on the container's loopback
#
# The dev cluster's test keys are never served on all interfaces by default. To reach it from the host,
# say so and require mTLS (dev CA and client certificates in /home/hsmlb/dev/tls, see the README):
#   docker run --rm -p 127.0.0.1:50051:50051 -v hsmlb-dev:/home/hsmlb/dev hsmlb \
#     dev up --state-dir /home/hsmlb/dev --listen 0.0.0.0:50051 --serve --tls
#
# Production does not use the dev cluster: mount a real config (and the PKCS#11 module, PIN file or
# PIN environment variable it names) and run `serve`, e.g.
#   docker run -v /etc/hsmlb:/etc/hsmlb:ro -e HSMLB_CONFIG=/etc/hsmlb/hsmlb.yaml \
#     hsmlb serve --config /etc/hsmlb/hsmlb.yaml
# (HSMLB_CONFIG tells the HEALTHCHECK the port and whether to speak TLS; with mTLS also set HSMLB_CA,
# HSMLB_CERT and HSMLB_KEY to a CA file and a client certificate and key, mounted from a secret.)
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
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HSMLB_CONFIG=/home/hsmlb/dev/hsmlb.yaml HSMLB_CA=/home/hsmlb/dev/tls/ca.crt \
    HSMLB_CERT=/home/hsmlb/dev/tls/app.crt HSMLB_KEY=/home/hsmlb/dev/tls/app.key
WORKDIR /opt/hsmlb
USER hsmlb:hsmlb
EXPOSE 50051

# gRPC health service (grpc.health.v1.Health/Check, overall service ""): exit 0 only when SERVING;
# NOT_SERVING, connection refused or a timeout exit 1. `hsmlb health` finds the port in $HSMLB_CONFIG
# and speaks TLS when that config has tls: (client certificate from HSMLB_CA/HSMLB_CERT/HSMLB_KEY).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/opt/venv/bin/hsmlb", "health", "--timeout", "3"]

ENTRYPOINT ["hsmlb"]
# Embedded dev cluster: SoftHSM2 tokens with public test keys under /home/hsmlb/dev, then the daemon.
# Production overrides this with `serve --config FILE` on a mounted config (see the top of this file).
# Loopback only: the public test keys are not served beyond the container unless asked (see the top).
CMD ["dev", "up", "--state-dir", "/home/hsmlb/dev", "--listen", "127.0.0.1:50051", "--serve"]
