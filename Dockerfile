# ironlb: one image for the controller and the speaker.
#   docker build -t ghcr.io/ironlb/ironlb:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lab ./lab
COPY benches ./benches
RUN cargo build --release --locked --bin ironlb && strip target/release/ironlb

# Debian slim rather than distroless: the speaker runs `nft` for the
# forwarder's transparent routing (externalTrafficPolicy: Local).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ironlb /usr/local/bin/ironlb
# The controller runs as this user; the speaker's DaemonSet overrides it (root
# with only NET_RAW and NET_ADMIN).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ironlb"]
