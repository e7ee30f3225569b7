//! TLS to the stores: PostgreSQL (`sslmode=require` or `verify-full` in the URL; the default,
//! `prefer`, uses TLS when the server offers it) and Redis (`rediss://` URLs). Server
//! certificates are verified against the system's roots, or against the PEM file named by the
//! standard `SSL_CERT_FILE` variable (a private CA), as rustls-native-certs reads them. Kafka's TLS
//! is librdkafka's own (`--kafka-security-protocol`, `--kafka-ssl-ca-location`).

use rustls::{ClientConfig, RootCertStore};

/// Make `ring` the process's rustls provider (the Redis client builds its TLS configuration
/// with the default one); idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client configuration verifying servers against the system roots (or `SSL_CERT_FILE`).
pub fn client_config() -> ClientConfig {
    install_crypto_provider();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read a trusted certificate");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "trusted certificates for TLS to the stores");
    ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}
