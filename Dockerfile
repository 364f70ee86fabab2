# redis-writebehind: the module built in a Rust stage, shipped on the official Redis 8 image.
#   docker build -t redis-writebehind .
#   docker run -p 6379:6379 -v wb-data:/data -e SNOWFLAKE_ACCOUNT=... redis-writebehind

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --lib

FROM redis:8
COPY --from=build /src/target/release/libredis_writebehind.so /usr/local/lib/redis-writebehind/libredis_writebehind.so
COPY redis.conf /usr/local/etc/redis/redis.conf
COPY scripts/snowflake/schema.sql /usr/local/share/redis-writebehind/schema.sql
RUN mkdir -p /data && chown redis:redis /data
USER redis
VOLUME /data
EXPOSE 6379
# -e: redis-cli exits 0 even on an error reply (LOADING, unknown command) unless asked not to.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD redis-cli -e WB.STATUS > /dev/null || exit 1
CMD ["redis-server", "/usr/local/etc/redis/redis.conf"]
