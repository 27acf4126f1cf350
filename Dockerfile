# syntax=docker/dockerfile:1
# letta-proxy image: built with the Rust toolchain, run from Debian slim as a non-root user.
#
#   docker build -t letta-proxy .
#   docker run -p 8300:8300 -v "$PWD/my.toml:/etc/letta-proxy/letta-proxy.toml:ro" letta-proxy
#
# The image carries no configuration: mount one at /etc/letta-proxy/letta-proxy.toml (see
# config/letta-proxy.toml for every key, config/compose.toml for the compose setup). Inside a
# container `[server] listen` must be "0.0.0.0:8300", not the loopback default.

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
USER letta-proxy
# 8300: Letta API for clients, GET /metrics, /-/healthy, /-/ready. 8301: admin (when configured).
EXPOSE 8300 8301
ENTRYPOINT ["letta-proxy"]
CMD ["--config", "/etc/letta-proxy/letta-proxy.toml"]
