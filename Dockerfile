# dcr-bootstrap: an init container that registers an OAuth client by DCR and writes its credentials.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: a virtualenv with the pinned runtime set and the package; compilers never reach the final image
FROM ${PYTHON_IMAGE} AS build
# pip's index settings come from the build environment (e.g. --build-arg PIP_INDEX_URL) and stay in this stage.
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/dcr-bootstrap
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN /opt/dcr-bootstrap/bin/pip install --no-cache-dir -r requirements/runtime.txt -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY bootstrap/ bootstrap/
# The runtime needs neither setuptools nor pip (16 MB): the final virtualenv holds only what runs.
RUN /opt/dcr-bootstrap/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/dcr-bootstrap/bin/pip uninstall --yes setuptools \
 && /opt/dcr-bootstrap/bin/python -m pip uninstall --yes pip

# --- runtime
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dcr-bootstrap" \
      org.opencontainers.image.description="Registers an OAuth client by Dynamic Client Registration (RFC 7591/7592) and writes its credentials for an unmodified service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/dcr-bootstrap/dcr-bootstrap"
ENV PATH=/opt/dcr-bootstrap/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DCR_CLIENT_FILE=/var/lib/dcr/.dcr_client.json \
    DCR_LOG_FORMAT=json
COPY --from=build /opt/dcr-bootstrap /opt/dcr-bootstrap
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
# The shared directory exists in the image owned by the runtime user: Docker copies it (and its owner)
# into a new, empty named volume, so a non-root bootstrap can write there.
RUN groupadd --system --gid 10001 dcr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin dcr \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/dcr
USER 10001:10001
# The working directory is not the volume: settings read a .env from it, and any co-tenant of the volume
# could drop one there. / belongs to root; every path the tool uses is absolute (DCR_CLIENT_FILE above).
WORKDIR /
# No VOLUME: it would give every service that does not mount /var/lib/dcr an anonymous volume that
# `down -v` never removes. Mount a named volume there (compose) or an emptyDir (Kubernetes).
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
