# Builds the plugins (wasm32-wasip2) and the host, then ships the binary, the
# plugins and the example flows in a slim image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN plugins/build.sh && cargo build --release -p flowhost

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/flowhost /usr/local/bin/flowhost
COPY --from=build /src/plugins/dist /app/plugins
COPY flows /app/flows
COPY config.yaml /app/config.yaml
ENV FLOWHOST_LISTEN=0.0.0.0:8080
EXPOSE 8080
CMD ["flowhost", "serve"]
