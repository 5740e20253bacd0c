# Oktorus SFU
#   docker build -t oktorus-sfu .
#   docker run --network host -v sfu-data:/data \
#     -e SFU_ICE_HOSTS=<host IP> -e SFU_ANNOUNCE_IP=<public IP> oktorus-sfu
#
# Media is ICE over UDP on ephemeral ports of the SFU_ICE_HOSTS addresses (default 127.0.0.1,
# i.e. reachable from inside the container only): give the container's or host's address, and the
# public address with SFU_ANNOUNCE_IP behind NAT. `--network host` is the simplest deployment;
# with a bridge network every UDP port the server gathers on must be reachable.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# No apt packages: aiortc, av (with FFmpeg), cryptography, uvloop and numpy ship manylinux wheels.
RUN groupadd --system --gid 10001 sfu \
    && useradd --system --uid 10001 --gid sfu --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin sfu \
    && mkdir -p /data \
    && chown sfu:sfu /data \
    && chmod 0700 /data

WORKDIR /app
COPY pyproject.toml ./
COPY sfu ./sfu
COPY signaling ./signaling
COPY consent ./consent
COPY recorder ./recorder
COPY bench ./bench
# Same install as scripts/serve, non-editable; dependency versions come from pyproject.toml.
RUN pip install --no-cache-dir .

USER 10001:10001
VOLUME /data
# HTTP + WebSocket signalling (TCP). Media: UDP, ephemeral ports (see above).
EXPOSE 8080
CMD ["python", "-m", "sfu", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
