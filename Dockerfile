# redis-writebehind: the module built in a Rust stage, shipped on the official Redis 8 image (default)
# or on the official Valkey 9 image. One module binary loads into both.
#   docker build -t redis-writebehind .                              # on redis:8.0.6
#   docker build --build-arg SERVER=valkey -t valkey-writebehind .   # on valkey/valkey:9.1.2
#   docker run -p 6379:6379 -v wb-data:/data -e SNOWFLAKE_ACCOUNT=... redis-writebehind
# Both images run as uid 999 with the same paths, commands and probes: on the Valkey image,
# redis-server and redis-cli are links to valkey-server and valkey-cli.

ARG SERVER=redis

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --lib

FROM redis:8.0.6-bookworm AS runtime-redis
RUN mkdir -p /data && chown redis:redis /data
USER redis

FROM valkey/valkey:9.1.2-bookworm AS runtime-valkey
USER root
RUN for b in server cli; do \
      [ -e /usr/local/bin/redis-$b ] || ln -s valkey-$b /usr/local/bin/redis-$b; \
    done \
 && mkdir -p /data && chown valkey:valkey /data
USER valkey

FROM runtime-${SERVER}
COPY --from=build /src/target/release/libredis_writebehind.so /usr/local/lib/redis-writebehind/libredis_writebehind.so
COPY redis.conf /usr/local/etc/redis/redis.conf
COPY scripts/snowflake/schema.sql /usr/local/share/redis-writebehind/schema.sql
VOLUME /data
EXPOSE 6379
# -e: redis-cli exits 0 even on an error reply (LOADING, unknown command) unless asked not to.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD redis-cli -e WB.STATUS > /dev/null || exit 1
CMD ["redis-server", "/usr/local/etc/redis/redis.conf"]
