# Builds the redsink binary into a small runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# sqlx-core with TCP_NODELAY on its sockets (vendor/README.md), patched in by Cargo.toml.
COPY vendor ./vendor
# Cargo.toml declares the benchmark target: its file must be there for any build.
COPY benches ./benches
RUN cargo build --release --locked --bin redsink \
 && strip /src/target/release/redsink

FROM debian:bookworm-slim
# CA certificates: TLS to Redis or Postgres servers with a public CA.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 redsink
COPY --from=build /src/target/release/redsink /usr/local/bin/redsink
COPY config /etc/redsink
USER redsink
ENTRYPOINT ["redsink"]
CMD ["run", "--config", "/etc/redsink/redsink.toml"]
