# The routingservice image: a static binary on a distroless, non-root runtime.
#
#   docker build -t routingservice:0.3.0 \
#     --build-arg VERSION=0.3.0 --build-arg COMMIT=$(git rev-parse HEAD) .
#   docker run -d -e JWT_SECRET=$(openssl rand -hex 32) -v routing-data:/data \
#     -p 127.0.0.1:8082:8082 -p 127.0.0.1:8085:8085 routingservice:0.3.0
#
# The image runs deploy/docker/config.yaml (ROUTING_CONFIG): production mode
# on the embedded engines (single_node: true), which needs JWT_SECRET (at
# least 32 bytes) and signs no tokens for callers (no demo, no token
# command). Mount another configuration over /etc/routingservice/config.yaml
# (deploy/kubernetes and deploy/compose do) for anything else.
#
# Ports: 8082 the HTTP API (api.listen), 8085 the WebSocket server
# (realtime.listen), 9090 the operations endpoints /healthz, /readyz and
# /metrics (ops.listen); inside the container they listen on every
# interface, and `docker run -p` decides what is published.
#
# deploy/image_test.go builds the binary with the flags of the build stage
# below (read from this file) and checks that it is static and runs.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
ARG COMMIT=""
# The store (SQLite) and every other dependency are pure Go.
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags "-s -w -X github.com/go-routing-service/routingservice/internal/version.Version=${VERSION} -X github.com/go-routing-service/routingservice/internal/version.Commit=${COMMIT}" -o /out/routingservice ./cmd/routingservice
# The data dir is the service's user's only (it tightens a wider one at start).
RUN mkdir -p -m 0700 /out/data

# Distroless static: CA certificates, tzdata, /etc/passwd with the nonroot
# user (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/routingservice /usr/local/bin/routingservice
COPY --from=build --chown=65532:65532 /out/data /data
COPY deploy/docker/config.yaml /etc/routingservice/config.yaml
ENV ROUTING_DATA_DIR=/data
ENV ROUTING_CONFIG=/etc/routingservice/config.yaml
VOLUME ["/data"]
EXPOSE 8082 8085 9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/routingservice"]
CMD ["serve"]
