# syntax=docker/dockerfile:1
# letta-proxy image: built with the Rust toolchain, run from Debian slim as a non-root user.
#
#   docker build -t letta-proxy .
#   docker run -p 8300:8300 -e LETTA_PROXY__BACKENDS__0__URL=http://letta.example:8283 letta-proxy
#   docker run -p 8300:8300 -v "$PWD/config:/etc/letta-proxy:ro" letta-proxy --config /etc/letta-proxy/my.toml
#
# The image carries config/letta-proxy.toml (every key at its default) at
# /etc/letta-proxy/letta-proxy.toml and listens on all interfaces (LETTA_PROXY__SERVER__LISTEN
# below overrides the file's loopback default; the environment wins over any file). Mount a
# folder of your own at /etc/letta-proxy rather than a single file, so that edits reach a reload
# (admin.watch_config) whatever way the editor saves.
#
# CI cannot run Docker: tests/deploy_docker.rs checks this file offline (every COPY source is in
# the build context left by .dockerignore, and the builder's RUN line is run as is, outside
# Docker, when LETTA_PROXY_DOCKER_BUILD=1).

# The toolchain the project is built and tested with. Cargo.lock needs at least 1.89
# (uuid 1.29, through moka), whatever Cargo.toml's rust-version says.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates registry and the target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin letta-proxy \
 && install -D -m 0755 target/release/letta-proxy /out/letta-proxy

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin letta-proxy
COPY --from=builder /out/letta-proxy /usr/local/bin/letta-proxy
COPY config/letta-proxy.toml /etc/letta-proxy/letta-proxy.toml
# Inside a container the loopback default would accept no client.
ENV LETTA_PROXY__SERVER__LISTEN=0.0.0.0:8300
USER letta-proxy
# 8300: Letta API for clients, GET /metrics, /-/healthy, /-/ready. 8301: admin (when configured).
EXPOSE 8300 8301
# No curl in this image: the binary probes itself (exit 0 on a 2xx, 1 otherwise). /-/ready is
# 200 while at least one backend is usable. Change the port here if you change `listen`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["letta-proxy", "health", "--timeout", "2s", "http://127.0.0.1:8300/-/ready"]
ENTRYPOINT ["letta-proxy"]
CMD ["--config", "/etc/letta-proxy/letta-proxy.toml"]
