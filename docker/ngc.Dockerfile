# torchkiln ngc: NVIDIA's NGC PyTorch image plus the same user/shell/requirements layer as the
# train image (the scripts in docker/scripts are shared). torch is NGC's own: it is pinned while
# the requirements install, and the build fails if it changed.
#
# ARG defaults equal the settings model's (tests/unit/test_defaults_agree.py).

ARG NGC_YEAR=25
ARG NGC_MONTH=10
ARG NGC_IMAGE=nvcr.io/nvidia/pytorch:${NGC_YEAR}.${NGC_MONTH}-py3
ARG APT_MIRROR=
ARG PIP_INDEX_URL=
ARG UID=1000
ARG GID=1000
ARG USR=user
ARG GRP=user
# A 0/1 switch that grants sudo, not a password (secrets come only as secret mounts).
# hadolint ignore=DL3064
ARG PASSWORDLESS_SUDO=0
ARG PROJECT_ROOT=/opt/project
ARG COMPOSE_PROJECT_NAME=torchkiln

FROM scratch AS runtime-scripts
COPY docker/scripts/net.sh docker/scripts/setup-user.sh docker/scripts/install-wheels.sh /
COPY docker/scripts/link-package.sh docker/scripts/zshrc /

FROM ${NGC_IMAGE} AS ngc
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base may end with a non-root user; the layer below needs root.
USER 0
ARG APT_MIRROR
ARG PIP_INDEX_URL
ARG UID
ARG GID
ARG USR
ARG GRP
# hadolint ignore=DL3064
ARG PASSWORDLESS_SUDO
ARG PROJECT_ROOT
RUN --mount=type=cache,id=torchkiln-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=torchkiln-apt-lists,target=/var/lib/apt,sharing=locked \
    --mount=type=secret,id=ca_bundle \
    --mount=type=bind,from=runtime-scripts,target=/opt/torchkiln-scripts \
    /opt/torchkiln-scripts/setup-user.sh
# NGC's Python is the system one (Ubuntu marks it externally managed); torch stays pinned.
RUN --mount=type=cache,id=torchkiln-pip,target=/root/.cache/pip \
    --mount=type=secret,id=ca_bundle \
    --mount=type=secret,id=pip_index_token \
    --mount=type=bind,from=runtime-scripts,target=/opt/torchkiln-scripts \
    --mount=type=bind,source=docker/requirements.txt,target=/opt/requirements.txt \
    set -eux; \
    before=$(python -c 'import torch; print(torch.__version__, torch.__file__)'); \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
        /opt/torchkiln-scripts/install-wheels.sh requirements /opt/requirements.txt; \
    after=$(python -c 'import torch; print(torch.__version__, torch.__file__)'); \
    [ "$before" = "$after" ] || { echo "ERROR: torch changed: $before -> $after" >&2; exit 1; }; \
    /opt/torchkiln-scripts/link-package.sh
# Only the in-image code: the entry modules and torchkiln.inimage (stdlib + torch).
COPY --chown=${UID}:${GID} src/torchkiln/__init__.py src/torchkiln/smoke.py src/torchkiln/bench.py \
     /opt/torchkiln/torchkiln/
COPY --chown=${UID}:${GID} src/torchkiln/inimage/ /opt/torchkiln/torchkiln/inimage/
ARG NGC_YEAR
ARG NGC_MONTH
ARG NGC_IMAGE
ARG COMPOSE_PROJECT_NAME
LABEL org.opencontainers.image.title="torchkiln ngc" \
      io.torchkiln.project="${COMPOSE_PROJECT_NAME}" \
      org.opencontainers.image.description="NGC PyTorch ${NGC_YEAR}.${NGC_MONTH} with your user" \
      org.opencontainers.image.source="https://github.com/torchkiln/torchkiln" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${NGC_IMAGE}" \
      io.torchkiln.ngc-image="${NGC_IMAGE}" \
      io.torchkiln.uid="${UID}" \
      io.torchkiln.gid="${GID}"
WORKDIR ${PROJECT_ROOT}
USER ${UID}:${GID}
CMD ["zsh"]
