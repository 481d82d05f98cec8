# The routingservice image: a static binary on a distroless, non-root runtime.
#
#   docker build -t routingservice:0.2.0 \
#     --build-arg VERSION=0.2.0 --build-arg COMMIT=$(git rev-parse HEAD) .
#   docker run -v routing-data:/data -p 8082:8082 -p 8085:8085 routingservice:0.2.0
#
# Ports: 8082 the HTTP API (api.listen), 8085 the WebSocket server
# (realtime.listen), 9090 the operations endpoints /healthz, /readyz and
# /metrics (ops.listen; mount a configuration that sets it to ":9090" to
# reach them from outside the container, as deploy/kubernetes does).
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
RUN mkdir -p /out/data

# Distroless static: CA certificates, tzdata, /etc/passwd with the nonroot
# user (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/routingservice /usr/local/bin/routingservice
COPY --from=build --chown=65532:65532 /out/data /data
ENV ROUTING_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8082 8085 9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/routingservice"]
CMD ["serve"]
