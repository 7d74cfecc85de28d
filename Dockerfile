# syntax=docker/dockerfile:1
# quotad's container image: a release build, then only the two binaries on
# a minimal, non-root runtime (distroless: glibc, CA certificates, no
# shell). Build (BuildKit, the default since Docker 23):
#   docker build -t quotad .
#
# The entrypoint is `quotad serve`; the arguments are serve's flags. The
# defaults listen on every interface (inside a container, loopback alone
# would be unreachable) with the embedded demo config; the Helm chart
# passes its own (see helm/quotad, and tests/helm.rs, which starts the
# binary with them).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the registry and the dependencies' build
# between image builds, so an edit of quotad's own source rebuilds quotad
# alone. The `dist` profile is `release` without debug info, stripped.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin quotad --bin quotactl \
 && mkdir -p /out && cp target/dist/quotad target/dist/quotactl /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/quotad /usr/local/bin/quotad
COPY --from=build /out/quotactl /usr/local/bin/quotactl
USER 65532:65532
# gRPC (both APIs), HTTP (health, metrics), admin.
EXPOSE 8081 9090 8082
ENTRYPOINT ["/usr/local/bin/quotad", "serve"]
CMD ["--grpc-addr=0.0.0.0:8081", "--http-addr=0.0.0.0:9090"]
