# forescale: the decision engine as a small image running the daemon as a
# non-root user, with its state on a volume.
#
#   docker build -t forescale .
#   docker build -t forescale:lstm --build-arg EXTRAS=holt-winters,prophet,aws,alibaba,k8s,lstm .
#   docker run -d --name forescale -e FORESCALE_API_TOKEN \
#       -v /etc/forescale:/etc/forescale:ro -v forescale-state:/var/lib/forescale \
#       -p 9464:9464 forescale
#   docker kill --signal HUP forescale          # reload the config
#   docker exec forescale forescale plans --config /etc/forescale/config.yaml
#
# The config must put the state under /var/lib/forescale and, to be scraped,
# listen on 0.0.0.0:9464 (server.listen) with server.auth set (bearer tokens;
# a non-loopback listen is refused without it; /healthz stays open). On
# another port, tell the health check: -e FORESCALE_HEALTHCHECK_URL=http://127.0.0.1:PORT/healthz

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# the optional extras to install; torch (lstm) only when asked for
ARG EXTRAS=holt-winters,prophet,aws,alibaba,k8s
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/forescale
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY forecasters ./forecasters
COPY actuators ./actuators
COPY policies ./policies
RUN /opt/forescale/bin/pip install ".[${EXTRAS}]" \
    && /opt/forescale/bin/forescale --version

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/forescale/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 forescale \
    && useradd --system --uid 10001 --gid forescale --home-dir /var/lib/forescale --shell /usr/sbin/nologin forescale \
    && mkdir -p /var/lib/forescale /etc/forescale \
    && chown forescale:forescale /var/lib/forescale \
    && chmod 0750 /var/lib/forescale
COPY --from=build /opt/forescale /opt/forescale
COPY examples/csv-dry-run.yaml /etc/forescale/config.example.yaml
USER forescale
WORKDIR /var/lib/forescale
VOLUME ["/var/lib/forescale"]
EXPOSE 9464
# SIGTERM lets running cycles finish (up to 30 s) before the daemon exits
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('FORESCALE_HEALTHCHECK_URL', 'http://127.0.0.1:9464/healthz'), timeout=4)"]
ENTRYPOINT ["forescale"]
CMD ["run", "--config", "/etc/forescale/config.yaml"]
