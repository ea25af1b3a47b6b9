# Container image for rtcd. Build from the repository root:
#   docker build -f deploy/container/rtcd.Dockerfile -t rtcd .
# Run (docs/containers.md has the full list of settings a container needs):
#   docker run -e RTCD_API_SECURITY_ADMIN_SECRET_KEY="$(head -c 32 /dev/urandom | base64)" \
#     -e RTCD_RTC_ICE_HOST_OVERRIDE=<the host's public IP> \
#     -p 8045:8045 -p 8047:8047 -p 8443:8443/udp -v rtcd-data:/var/lib/rtcd rtcd
# The ENV lines below are the container defaults; tests/tests/e2e/process.rs starts rtcd with
# exactly them (plus the two variables above) and checks it behaves as docs/containers.md says.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rtcd

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/rtcd --shell /usr/sbin/nologin rtcd \
    && mkdir -p /var/lib/rtcd /etc/rtcd && chown rtcd /var/lib/rtcd && chmod 0700 /var/lib/rtcd
COPY --from=build /src/target/release/rtcd /usr/local/bin/rtcd
COPY deploy/rtcd.sample.toml /etc/rtcd/rtcd.sample.toml
USER rtcd
VOLUME /var/lib/rtcd
# Inside a container every listener binds all of the container's interfaces: 127.0.0.1 there is
# the container itself, unreachable from proxies and Prometheus. Publish 8045 (HTTP API) and
# 8047 (gRPC) to the proxies' network only, 8046 (metrics, unauthenticated) to Prometheus only,
# and 8443/udp to the world. The admin API is on, so that the admin secret (required; rtcd
# refuses to start without a strong one) is all a first registration needs.
ENV RTCD_API_HTTP_LISTEN_ADDRESS=0.0.0.0:8045
ENV RTCD_API_METRICS_LISTEN_ADDRESS=0.0.0.0:8046
ENV RTCD_GRPC_LISTEN_ADDRESS=0.0.0.0:8047
ENV RTCD_API_SECURITY_ENABLE_ADMIN=true
ENV RTCD_RTC_ICE_ADDRESS_UDP=0.0.0.0
ENV RTCD_RTC_ICE_PORT_UDP=8443
ENV RTCD_STORE_DATA_SOURCE=/var/lib/rtcd/db
EXPOSE 8045/tcp 8046/tcp 8047/tcp 8443/udp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rtcd"]
CMD ["serve"]
