# The Automend image: the controller (and, later, the simulator) in one static-ish binary on a
# distroless, non-root base.
#   docker build -t automend:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin automend

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/automend /usr/local/bin/automend
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/automend"]
CMD ["controller"]
