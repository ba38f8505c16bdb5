# One image for the gate's worker and its webhook receiver:
#   docker run ... wagate            -> `wagate worker`   (the default command)
#   docker run ... wagate webhook    -> `wagate webhook`
# RocksDB state lives on the /data volume (WAGATE_DATA_DIR); the process runs as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY streams ./streams
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin wagate \
    && mkdir -p /data && chown wagate:wagate /data
COPY --from=build /install /usr/local
ENV PYTHONUNBUFFERED=1 \
    WAGATE_DATA_DIR=/data \
    WAGATE_WEB_BIND=0.0.0.0 \
    WAGATE_WEBHOOK_HOST=0.0.0.0 \
    WAGATE_LOG_FORMAT=json
USER 10001
WORKDIR /home/wagate
VOLUME ["/data"]
EXPOSE 6066 8080
ENTRYPOINT ["wagate"]
CMD ["worker"]
