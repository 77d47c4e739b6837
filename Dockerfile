# syntax=docker/dockerfile:1
# portcullis: a static-ish Rust binary on a distroless base (glibc + libgcc, no shell, uid 65532),
# built with the `dist` profile (fat LTO; see Cargo.toml).
#   docker build -t portcullis .
#   docker run --rm portcullis --help

FROM rust:1.89-bookworm AS build
WORKDIR /src
# Everything cargo needs (see .dockerignore); the lock file pins the dependency graph.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin portcullis \
 && install -D -m 0755 target/dist/portcullis /out/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/portcullis /usr/local/bin/portcullis
USER 65532:65532
# 9191: ext_authz gRPC (when listening on TCP), 9090: /healthz, /readyz, /metrics.
EXPOSE 9191 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/config.yaml"]
