# syntax=docker/dockerfile:1
# layerwatch: the operator and CLI in a virtualenv on a slim Python base, running as UID 65532.
#
#   docker build -t layerwatch .          pulls python:3.11-slim-bookworm
#   make image  (hack/build-image.sh)     docker if a daemon answers, else buildah on a debootstrap'ed
#                                         Debian base (--build-arg BASE_IMAGE=localhost/layerwatch-base:bookworm)
#
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as a build secret. It is mounted only
# while the pip commands run and never lands in a layer; without the secret those steps use pip's defaults:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module. Both stages use it, so the venv's
# interpreter symlink (/usr/local/bin/python3 on python:slim, /usr/bin/python3 on Debian) resolves in the
# final stage too.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv /opt/layerwatch
ENV PATH=/opt/layerwatch/bin:$PATH
WORKDIR /src

# Every runtime dependency, pinned in requirements.lock (hack/lock.sh), in a layer that changes only
# with the lock.
COPY requirements.lock ./
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-cache-dir -r requirements.lock

# Then the package itself (.dockerignore admits only pyproject.toml, requirements.lock, README.md, LICENSE and operator/).
# Afterwards pip and setuptools leave the venv (the final image installs nothing), and so does
# kubernetes/aio: kubernetes>=35 ships an asyncio copy of the whole generated client (~68 MB) that
# layerwatch, which uses the synchronous client, never imports. Every layerwatch module is imported
# once to prove nothing needed went with them.
COPY . ./
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-cache-dir --no-deps .; \
    python3 -m pip uninstall --yes --quiet pip setuptools; \
    rm -f /opt/layerwatch/bin/pip /opt/layerwatch/bin/pip3 /opt/layerwatch/bin/pip3.*; \
    rm -rf /opt/layerwatch/lib/python3*/site-packages/kubernetes/aio; \
    python3 -c 'import importlib, pkgutil, layerwatch; [importlib.import_module(m.name) for m in pkgutil.walk_packages(layerwatch.__path__, "layerwatch.")]'; \
    layerwatch --version

# A passwd/group entry for UID 65532: getpass.getuser() (kopf's peering identity) and friends need a name.
RUN echo 'layerwatch:x:65532:65532:layerwatch:/tmp:/usr/sbin/nologin' >> /etc/passwd; \
    echo 'layerwatch:x:65532:' >> /etc/group

FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/layerwatch/layerwatch
LABEL org.opencontainers.image.title="layerwatch" \
      org.opencontainers.image.description="Watches Flux OCIRepository artifacts through every hop of their registry proxy chain" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /etc/passwd /etc/group /etc/
COPY --from=build /opt/layerwatch /opt/layerwatch
# Read-only root friendly: bytecode was compiled at install time, HOME and the working directory are /tmp.
ENV PATH=/opt/layerwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["layerwatch"]
CMD ["operator", "--all-namespaces"]
