# One image for the gate's worker and its webhook receiver:
#   docker run ... wagate            -> `wagate worker`   (the default command)
#   docker run ... wagate webhook    -> `wagate webhook`
# RocksDB state lives on the /data volume (WAGATE_DATA_DIR); the process runs as an unprivileged user.
# Reproducible: the dependencies come from requirements.lock (every version pinned, every file's hash
# checked); the package itself is installed without resolving anything. tests/integration/test_image.py
# runs these same pip commands into a clean virtualenv. The base image is pinned to a patch release;
# pin it by digest (python:3.11.7-slim-bookworm@sha256:...) where your registry is reachable.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md LICENSE ./
COPY streams ./streams
# A virtualenv: the package is then built with the locked setuptools installed just before it.
RUN python -m venv /opt/wagate
RUN /opt/wagate/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
RUN /opt/wagate/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

FROM python:3.11.7-slim-bookworm
ARG VERSION=0.3.0
LABEL org.opencontainers.image.title="wagate" \
      org.opencontainers.image.description="WhatsApp 24-hour customer service window gate for Kafka" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin wagate \
    && mkdir -p /data && chown wagate:wagate /data
COPY --from=build /opt/wagate /opt/wagate
ENV PATH=/opt/wagate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WAGATE_DATA_DIR=/data \
    WAGATE_WEB_BIND=0.0.0.0 \
    WAGATE_WEBHOOK_HOST=0.0.0.0 \
    WAGATE_WEBHOOK_ADMIN_HOST=0.0.0.0 \
    WAGATE_LOG_FORMAT=json
USER 10001
WORKDIR /home/wagate
VOLUME ["/data"]
EXPOSE 6066 6067 8080 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["wagate", "health"]
ENTRYPOINT ["wagate"]
CMD ["worker"]
