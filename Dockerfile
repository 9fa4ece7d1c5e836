# Multi-stage build of the three DevConnect programs.
#   docker build -t devconnect .
FROM rust:1.95-bookworm AS build
# rdkafka builds librdkafka with cmake and needs curl headers (docs/stack.md).
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins -p command-api -p projector -p query-api

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcurl4 curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 devconnect
COPY --from=build /src/target/release/command-api /src/target/release/projector /src/target/release/query-api /usr/local/bin/
USER devconnect
