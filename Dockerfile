# Oktorus SFU
#   docker build -t oktorus-sfu .
#   docker run --network host --stop-timeout 330 -v sfu-data:/data -v /etc/sfu/tls:/tls:ro \
#     -e SFU_ICE_HOSTS=<host IP> -e SFU_ANNOUNCE_IP=<public IP> \
#     -e SFU_TLS_CERT=/tls/fullchain.pem -e SFU_TLS_KEY=/tls/privkey.pem oktorus-sfu
#
# Signalling listens on 0.0.0.0:8080 and plain http is refused there: mount a certificate
# (SFU_TLS_CERT/SFU_TLS_KEY, re-read when renewed), or SFU_TLS_SELF_SIGNED=1 for a LAN trial,
# or SFU_ALLOW_INSECURE_HTTP=1 when a TLS-terminating proxy is in front.
# Media is ICE over UDP on ephemeral ports of the SFU_ICE_HOSTS addresses (default 127.0.0.1,
# i.e. reachable from inside the container only): give the container's or host's address, and the
# public address with SFU_ANNOUNCE_IP behind NAT. `--network host` is the simplest deployment;
# with a bridge network every UDP port the server gathers on must be reachable (narrow the range
# with --sysctl net.ipv4.ip_local_port_range="40000 40999" and publish 40000-40999/udp).
# `docker stop` sends SIGTERM: the server drains (SFU_DRAIN_DEADLINE, default 300 s), so give it a
# --stop-timeout above that. Probes: GET /healthz (alive), GET /readyz (accepting joins).
# TURN (SFU_TURN_URIS, SFU_TURN_SECRET), webhooks (SFU_WEBHOOK_URLS, SFU_WEBHOOK_KEY) and
# SFU_REDIS_URL: see docs/operations.md; pass secrets as variables, never as flags.
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
# HTTPS + WebSocket signalling (TCP). Media: UDP, ephemeral ports (see above).
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["python", "-m", "sfu", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
