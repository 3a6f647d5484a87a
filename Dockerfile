# rampart container image.
#
#   docker build -t rampart .                       # builds from source in the builder image
#   docker build --build-context prebuilt=DIR -t rampart .
#                                                   # takes DIR/rampart (a binary built on a
#                                                   # glibc-compatible host) and skips the build
#
# deploy/container/build-local.sh builds it with podman where no base image can be pulled.

ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build from source -------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/rampart /out/rampart

# --- the binary the runtime image takes ----------------------------------------------------------
# `--build-context prebuilt=DIR` replaces this stage with DIR (which must hold `rampart`); the
# builder stage above is then not run at all.
FROM scratch AS prebuilt
COPY --from=builder /out/rampart /rampart

# --- runtime -----------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}

# ca-certificates: upstream TLS without a `ca:` file uses the system roots. Skipped when the
# base already has them (the debootstrap base of build-local.sh includes them).
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
     && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 65532 rampart \
 && useradd --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin rampart

COPY --from=prebuilt /rampart /usr/local/bin/rampart
COPY config/demo.yaml /etc/rampart/rampart.yaml
# The demo policy names its demo-only TLS pair relative to the working directory.
COPY config/demo-tls /etc/rampart/config/demo-tls
WORKDIR /etc/rampart

USER 65532:65532
EXPOSE 8080 15001 9901

# The image has no curl: bash's /dev/tcp sends one request to the admin listener and checks
# the status line. The admin address must be reachable on 127.0.0.1:9901 in the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [ \"$status\" = 200 ]"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["rampart"]
CMD ["run", "--config", "/etc/rampart/rampart.yaml"]
