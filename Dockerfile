# One image with every lambdalake binary (ingest, speed, batch, serving, lakehouse, loadgen) in
# /usr/local/bin; infra/docker-compose.yml runs each service from it with its own command.
#
#   docker build -t lambdalake:dev .          (or: docker compose -f infra/docker-compose.yml build)
#
# Dependency caching: cargo-chef layers. The `planner` stage reduces the workspace to a recipe
# (manifests, lockfile, stub targets); the `builder` stage compiles every dependency from that
# recipe alone (`cargo chef cook`), so that layer is reused until a Cargo.toml or Cargo.lock
# changes, and only then copies the sources and compiles the workspace's own crates. On 2 cores
# the dependencies are most of the ~20 minutes of a cold build; a source change costs the
# workspace crates only. The cargo registry is also a BuildKit cache mount (downloads kept across
# recipe changes); it is not needed for the layers to work.

FROM rust:1.95-bookworm AS chef
# librdkafka is built from its bundled source (rdkafka features libz + ssl + tokio, no cmake): its
# configure script needs bash, make, gcc and g++; libz-sys and openssl-sys find zlib's and
# OpenSSL's headers through pkg-config; aws-lc-sys (rustls) builds with cc. rust:*-bookworm (buildpack-deps) ships all of
# them; install whatever a different base would lack rather than fail halfway through the build.
RUN set -eux; \
    missing=""; \
    for tool in make gcc g++ perl pkg-config; do command -v "$tool" >/dev/null || missing="$missing $tool"; done; \
    [ -f /usr/include/zlib.h ] || missing="$missing zlib1g-dev"; \
    [ -f /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"; \
    if [ -n "$missing" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends make gcc g++ perl pkg-config zlib1g-dev libssl-dev; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    cargo install --locked cargo-chef --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# the dependency layer: rebuilt only when the recipe (manifests, lockfile) changes
RUN --mount=type=cache,id=lambdalake-cargo-registry,target=/usr/local/cargo/registry \
    cargo chef cook --locked --release --recipe-path recipe.json \
      -p lambdalake-ingest -p lambdalake-speed -p lambdalake-batch \
      -p lambdalake-serving -p lambdalake-lakehouse -p lambdalake-loadgen
COPY . .
RUN --mount=type=cache,id=lambdalake-cargo-registry,target=/usr/local/cargo/registry \
    set -eux; \
    cargo build --locked --release \
      -p lambdalake-ingest -p lambdalake-speed -p lambdalake-batch \
      -p lambdalake-serving -p lambdalake-lakehouse -p lambdalake-loadgen; \
    mkdir -p /out/bin; \
    for name in ingest speed batch serving lakehouse loadgen; do \
      cp "target/release/lambdalake-$name" /out/bin/; \
    done

FROM debian:bookworm-20250929-slim AS runtime

# ca-certificates for TLS (S3, Kafka over SSL), libssl3 for librdkafka (Kafka TLS and SASL), curl
# for the compose health checks
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates libssl3 curl; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 lambdalake; \
    useradd --system --uid 10001 --gid lambdalake --home-dir /var/lib/lambdalake --create-home \
      --shell /usr/sbin/nologin lambdalake

COPY --from=builder /out/bin/ /usr/local/bin/
# glibc's malloc (ingest, batch, serving, lakehouse) with two arenas rather than one per thread, up
# to 8 per core, each keeping what it freed: serving's peak RSS under the bench went from 166 to
# 133 MiB. Speed and loadgen use mimalloc and ignore it.
ENV MALLOC_ARENA_MAX=2

# relative defaults (data/master, data/lakehouse) land in the user's writable home
WORKDIR /var/lib/lambdalake
USER lambdalake

# every service listens on 127.0.0.1 unless told otherwise: compose sets LAMBDALAKE_*_LISTEN=0.0.0.0:port
EXPOSE 8080 8081 8082 8083 8084
CMD ["lambdalake-ingest", "--help"]
