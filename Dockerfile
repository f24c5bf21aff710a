# syntax=docker/dockerfile:1
# lookout container image.
#
#   docker build -t ghcr.io/example/lookout:0.1.0 .
#
# Base images are pinned by tag; pin them by digest too (`rust:1.95-bookworm@sha256:...`) in
# a release pipeline that refreshes digests deliberately.

# --- build ------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# librdkafka is compiled from source by the rdkafka crate and links the system OpenSSL
# (the runtime image ships the same Debian 12 libssl3).
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev cmake \
 && rm -rf /var/lib/apt/lists/*

# zlib is linked statically: the distroless runtime has no libz.so.1 (zstd is static anyway).
ENV LIBZ_SYS_STATIC=1

WORKDIR /src
COPY . .
# `--no-default-features`: the image carries no API-server simulator (`lookout demo` and
# `lookout sim` are for laptops). Cache mounts keep the registry and build artefacts between
# builds (BuildKit); the binary is copied out of the cached target directory because the
# mount is gone after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lookout --no-default-features \
 && cp target/release/lookout /lookout

# --- runtime ----------------------------------------------------------------------------
# glibc, libgcc, libssl3 and CA certificates; no shell, no package manager.
# `:nonroot` runs as 65532 by default; USER below says so explicitly for policy checks.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /lookout /lookout

USER 65532:65532
# The ops server (metrics, /healthz, /readyz).
EXPOSE 9090
ENTRYPOINT ["/lookout"]
CMD ["run", "--config", "/etc/lookout/lookout.yaml"]
