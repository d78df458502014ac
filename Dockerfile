# syntax=docker/dockerfile:1
# oms-exporter image: `docker build -t oms-exporter .`, then
# `docker run -p 10066:10066 -e OMS_PROJECT_ID=... -e OMS_REGION=... -e OMS_AK=... -e OMS_SK=... oms-exporter`
# or `docker run -p 10066:10066 oms-exporter --demo`. Podman, buildah, what the image holds and
# how CI checks it: docs/container.md.

# Build stage: the same `pip install .` as the README, into a virtualenv copied whole below.
# pip and setuptools leave the virtualenv once the exporter is in: the final image installs nothing.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY oms_exporter ./oms_exporter
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim
RUN groupadd --system --gid 10066 oms \
    && useradd --system --uid 10066 --gid oms --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin oms
# Owned by root: the exporter's user cannot change its own code.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10066:10066
EXPOSE 10066
# The slim image has no curl: ask /healthz with the standard library. A 401 (basic auth from
# --web.config.file) still proves the server answers. Assumes the default port and plain HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r, urllib.error as e\ntry: r.urlopen('http://127.0.0.1:10066/healthz', timeout=4)\nexcept e.HTTPError as x: raise SystemExit(x.code != 401)"]
ENTRYPOINT ["oms-exporter"]
