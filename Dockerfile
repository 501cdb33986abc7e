# Build: docker build -t sluice .
# Run:   docker run -p 5080:5080 -v sluice-data:/data sluice
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
VOLUME /data
EXPOSE 5080
ENTRYPOINT ["sluice"]
CMD ["serve", "--listen", "0.0.0.0:5080", "--data-dir", "/data"]
