//! One TLS stack for every client — rustls with the ring provider — installed as the process
//! default so that clients which take the default (reqwest for the marketplaces and the OTLP
//! exporter, redis, lapin, sqlx) all agree, and none can fall back to another provider.

/// Installs ring as rustls's process-wide default provider; harmless to call again.
pub fn install_default_provider() {
    // An error means a provider is installed already (ours, from an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}
