# bidorch image: docker build -t bidorch .   (docker-compose.yml builds it as bidorch:local)
#
# Layer order is the point of this file: dependencies are compiled in their own layer (cargo-chef)
# that depends only on Cargo.toml and Cargo.lock, so editing the sources rebuilds bidorch alone,
# not its ~430 locked dependencies. There is no Docker engine on the development machines, so
# this order is checked by reading, not by a build (.ci/check-deploy reads it): keep the
# `cargo chef cook` layer above any COPY of sources, and copy only the recipe before it.
#
# One image serves every command: the entrypoint is `bidorch`, the default command `worker`
# (`docker run bidorch migrate`, `... marketplace --addr 0.0.0.0:8081`, `... publish -`).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# Toolchain + cargo-chef, shared by the planner and the builder (installed once, then cached).
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

# Planner: reduce the project to a recipe (manifests, lockfile, target list). It sees every source
# file, but its output changes only when dependencies or targets do, so the cook layer below
# stays cached across source edits.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin bidorch

FROM chef AS builder
# Dependencies: this is the cached layer.
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin bidorch
# Sources: only what the binary is built from (migrations and the default config are compiled in),
# so editing tests or docs does not rebuild it. Should Cargo.toml ever name [[test]]/[[bench]]
# targets explicitly, copy their directories here too (cargo checks explicit target paths).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY migrations ./migrations
COPY schemas ./schemas
COPY examples ./examples
RUN cargo build --release --locked --bin bidorch

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: TLS to marketplaces, rediss:// and PostgreSQL over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bidorch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bidorch
COPY --from=builder /src/target/release/bidorch /usr/local/bin/bidorch
# config/{BIDORCH_ENV}.toml is looked up relative to the working directory. Owned by root and
# read-only to the process: configuration is not the worker's to change.
WORKDIR /app
COPY config ./config
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# /healthz, /readyz, /metrics when http.addr is set to 0.0.0.0:9090 (the default is loopback).
EXPOSE 9090
# `bidorch healthcheck` GETs /readyz on http.addr (exit 0 ready, 1 not). Containers of other
# commands override it (docker-compose.yml: the sandbox uses --url .../healthz, one-shot commands
# disable it). Kubernetes ignores HEALTHCHECK and uses the probes in deploy/k8s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bidorch", "healthcheck"]
ENTRYPOINT ["bidorch"]
CMD ["worker"]
