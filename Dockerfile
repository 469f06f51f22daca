# rtclake in a container: `docker build -t rtclake .` then see deploy/compose.yaml.
FROM python:3.11-slim-bookworm

# The JSON Lines parser is a C++ extension built against Debian's simdjson.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ libsimdjson-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN python -m venv /opt/rtclake \
    && /opt/rtclake/bin/pip install --no-cache-dir . \
    && /opt/rtclake/bin/rtclake --version

# Data (spool, lake, checkpoints) lives in a volume; the server listens on all addresses
# inside the container.
ENV RTCLAKE_DATA_DIR=/var/lib/rtclake \
    RTCLAKE_SERVER__HOST=0.0.0.0 \
    RTCLAKE_LOG_FORMAT=json
VOLUME /var/lib/rtclake
EXPOSE 8080
USER 1000:1000
ENTRYPOINT ["/opt/rtclake/bin/rtclake"]
CMD ["run"]
