# Negative fixture for infra/compose/check (never built): an unpinned FROM, only ingest built,
# and a final stage that runs as root.
#
#   infra/compose/check --dockerfile infra/compose/testdata/bad.Dockerfile
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p lambdalake-ingest

FROM debian
COPY --from=builder /src/target/release/lambdalake-ingest /usr/local/bin/
CMD ["lambdalake-ingest"]
