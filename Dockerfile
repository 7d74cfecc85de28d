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

# The base images, by tag. Pin them by digest for reproducible builds:
#   docker build \
#     --build-arg BUILD_IMAGE=rust:1.95-bookworm@sha256:<digest> \
#     --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> .
# (`docker buildx imagetools inspect IMAGE` prints a tag's digest.) The
# defaults stay tags: this file is written where no registry can be asked
# for a digest, and a digest copied unchecked would be a guess.
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the registry and the dependencies' build
# between image builds, so an edit of quotad's own source rebuilds quotad
# alone. The `dist` profile is `release` without debug info, stripped.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin quotad --bin quotactl \
 && mkdir -p /out && cp target/dist/quotad target/dist/quotactl /out/

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/quotad /usr/local/bin/quotad
COPY --from=build /out/quotactl /usr/local/bin/quotactl
USER 65532:65532
# gRPC (both APIs), HTTP (health, metrics), admin.
EXPOSE 8081 9090 8082
# Ready and answering (`quotad probe`: /readyz, gRPC health, one RLS call
# that charges nothing) on the default ports; the image has no shell or
# curl.
HEALTHCHECK --interval=10s --timeout=10s --start-period=5s CMD ["/usr/local/bin/quotad", "probe", "--timeout=2s"]
ENTRYPOINT ["/usr/local/bin/quotad", "serve"]
CMD ["--grpc-addr=0.0.0.0:8081", "--http-addr=0.0.0.0:9090"]
