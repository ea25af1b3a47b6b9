# Container image for rtcd-proxy. Build from the repository root:
#   docker build -f deploy/container/proxy.Dockerfile -t rtcd-proxy .
# Run (docs/containers.md has the full list of settings a container needs):
#   docker run -e PROXY_RTCD_URL=http://rtcd:8047 -e PROXY_RTCD_CLIENT_ID=my-platform \
#     -e PROXY_RTCD_AUTH_KEY=<the key registered at rtcd> \
#     -e PROXY_AUTH_ISSUERS=<your platform> -e PROXY_AUTH_AUDIENCES=rtcd-proxy \
#     -e PROXY_AUTH_KEYS='[{"kid":"k1","algorithms":["HS256"],"secret":"..."}]' \
#     -p 8080:8080 rtcd-proxy
# The ENV lines below are the container defaults; tests/tests/e2e/process.rs starts the proxy
# with exactly them (plus the variables above) and checks a user can join through it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rtcd-proxy

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin rtcd-proxy \
    && mkdir -p /etc/rtcd-proxy
COPY --from=build /src/target/release/rtcd-proxy /usr/local/bin/rtcd-proxy
COPY deploy/proxy.sample.toml /etc/rtcd-proxy/proxy.sample.toml
USER rtcd-proxy
# Every listener binds all of the container's interfaces (127.0.0.1 there is the container
# itself). Publish 8080 (WebSocket, web client, health) behind a TLS-terminating load balancer
# or set PROXY_SERVER_TLS_CERT_FILE / _KEY_FILE; publish 8081 (metrics, unauthenticated) to
# Prometheus only. The proxy keeps no state: run as many replicas as you like.
ENV PROXY_SERVER_LISTEN_ADDRESS=0.0.0.0:8080
ENV PROXY_SERVER_METRICS_LISTEN_ADDRESS=0.0.0.0:8081
EXPOSE 8080/tcp 8081/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rtcd-proxy"]
CMD ["serve"]
