# Builds the redsink binary into a small runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# Cargo.toml declares the benchmark target: its file must be there for any build.
COPY benches ./benches
RUN cargo build --release --locked --bin redsink

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 redsink
COPY --from=build /src/target/release/redsink /usr/local/bin/redsink
COPY config /etc/redsink
USER redsink
ENTRYPOINT ["redsink"]
CMD ["run", "--config", "/etc/redsink/redsink.toml"]
