# stevedore's runtime image, built from a context staged by deploy/docker/stage.sh: the
# binary built on the host, the libraries and loader it needs, the CA bundle, a user and the
# container config. No base image, nothing fetched.
#
#   cargo build --release && bash deploy/docker/stage.sh && docker build -t stevedore target/docker
#
# or everything at once, with docker compose: bash deploy/docker/up.sh
FROM scratch

COPY rootfs/ /
# An empty directory owned by the user, so a fresh volume is writable for it.
COPY --chown=65532:65532 store/ /var/lib/stevedore/

ENV STEVEDORE_CONFIG=/etc/stevedore/stevedore.toml
USER 65532:65532
VOLUME /var/lib/stevedore
# 5000: the mirror (and HTTPS_PROXY) listener; 9102: /metrics, /healthz, /readyz.
EXPOSE 5000 9102

# Ready (/readyz on the admin listener named by the config) or not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/stevedore", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/stevedore"]
CMD ["serve", "--config", "/etc/stevedore/stevedore.toml"]
