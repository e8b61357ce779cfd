# Herald in a container: a static-enough release binary on a slim Debian, run as a non-root
# user with its data on a volume. Build: docker build -t herald .
# (Not built in Herald's CI, whose machines cannot pull base images; the suite lints it.)

FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald \
 && cp target/release/herald /herald

FROM debian:bookworm-slim
# Debian's security updates replace pinned versions; take the current ones.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin herald \
 && mkdir -p /data \
 && chown herald:herald /data
COPY --from=build /herald /usr/local/bin/herald
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_DATA=/data
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["herald"]
CMD ["serve"]
