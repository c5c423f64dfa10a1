# One image for `hookline controller` and `hookline gateway`.
# Build: docker build -t hookline:dev .
# hack/image builds the same image without Docker from hack/image.contents; hack/check-image-drift
# fails when the final stage below and that file disagree, so change them together.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY build.rs ./
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# distroless: glibc, CA certificates, no shell, nonroot user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookline /usr/local/bin/hookline
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/hookline"]
CMD ["gateway"]
