# Build: docker build -t bidorch .   (used by docker-compose.yml)
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY migrations ./migrations
COPY schemas ./schemas
COPY examples ./examples
RUN cargo build --release --locked --bin bidorch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 bidorch
COPY --from=build /src/target/release/bidorch /usr/local/bin/bidorch
USER bidorch
ENTRYPOINT ["bidorch"]
CMD ["worker"]
