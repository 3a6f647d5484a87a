# rampart container image: the binary, the few glibc libraries it links, a passwd entry,
# Debian's CA bundle (/etc/ssl/certs/ca-certificates.crt: the system roots a TLS client without a
# `ca:` trusts; mount your own over it, or set SSL_CERT_FILE, to trust a private CA), and nothing
# else (no shell, no package manager). The HEALTHCHECK runs `rampart health`, which probes the
# admin listener itself, so no shell or curl is needed.
#
#   docker build -t rampart .                       # builds from source in the builder image
#   docker build --build-context prebuilt=DIR -t rampart .
#                                                   # takes DIR/rampart (a binary built on a
#                                                   # glibc-compatible host) and skips the build
#
# deploy/container/build-local.sh builds it with podman where no base image can be pulled, and
# deploy/container/test.sh runs it (non-root, /readyz, proxying, SIGHUP reload, stop, health).

ARG BUILDER_IMAGE=rust:1-bookworm
# Only a source of the runtime libraries (glibc, libgcc_s) and `ldd`; none of it is shipped
# except what the binary links. Must be the same Debian release as the builder (glibc version).
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

# --- the runtime file tree, assembled in a Debian stage ------------------------------------------
FROM ${RUNTIME_IMAGE} AS rootfs
COPY --from=prebuilt /rampart /rootfs/usr/local/bin/rampart
# Every library `ldd` names, and the dynamic loader, copied (symlinks resolved) to the path the
# binary asks for. The loader's default search path covers /lib/<triplet>, so no ld.so.cache
# is needed. glibc >= 2.34 has its NSS "files" and "dns" modules built in: name resolution
# works without libnss_* files or an nsswitch.conf.
# The CA bundle comes from Debian's ca-certificates: installed here when the stage lacks it
# (debian:bookworm-slim does; build-local.sh's debootstrap base carries it already).
RUN set -eu; \
    if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update -q; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates; \
    fi; \
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt; \
    bin=/rootfs/usr/local/bin/rampart; \
    chmod 0755 "$bin"; \
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do \
        mkdir -p "/rootfs$(dirname "$lib")"; \
        cp -L "$lib" "/rootfs$lib"; \
    done; \
    mkdir -p /rootfs/etc /rootfs/tmp; \
    chmod 1777 /rootfs/tmp; \
    echo 'root:x:0:0:root:/root:/sbin/nologin' > /rootfs/etc/passwd; \
    echo 'rampart:x:65532:65532:rampart:/nonexistent:/sbin/nologin' >> /rootfs/etc/passwd; \
    printf 'root:x:0:\nrampart:x:65532:\n' > /rootfs/etc/group; \
    chroot /rootfs /usr/local/bin/rampart --version

# --- runtime -----------------------------------------------------------------------------------
FROM scratch
COPY --from=rootfs /rootfs/ /
COPY config/demo.yaml /etc/rampart/rampart.yaml
# The demo policy names its demo-only TLS pair relative to the working directory.
COPY config/demo-tls /etc/rampart/config/demo-tls
WORKDIR /etc/rampart

# `rampart run` and `rampart health` both read the policy named here: mount yours at this path
# (a Kubernetes ConfigMap directory, a bind mount) or set RAMPART_CONFIG, and the health check
# follows its admin.listen.
ENV RAMPART_CONFIG=/etc/rampart/rampart.yaml
USER 65532:65532
# The ports of the shipped demo policy. It listens on 127.0.0.1 (a sidecar shares its pod's
# network namespace), so from outside that namespace they answer only under a policy of yours
# that listens on 0.0.0.0 (or with --network host).
EXPOSE 8080 15001 9901

# The admin listener must be reachable on loopback inside the container (any admin.listen on
# 127.0.0.1, 0.0.0.0 or :: is). /healthz: the process serves; `--path /readyz` for readiness.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/rampart", "health", "--timeout", "2s"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rampart"]
CMD ["run"]
