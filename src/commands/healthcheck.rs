//! `bidorch healthcheck [--url URL]`: asks a running worker's `/readyz`, exits 0 when it is
//! ready and 1 otherwise — the container healthcheck, so images need no curl.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// `bidorch healthcheck` flags.
#[derive(Args, Debug)]
pub struct HealthcheckArgs {
    /// The readiness URL to ask (default: `/readyz` on `http.addr`, via loopback when it
    /// listens on every interface).
    #[arg(long, value_name = "URL")]
    url: Option<url::Url>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl HealthcheckArgs {
    /// Whether the configuration is needed to know where to ask.
    pub fn needs_settings(&self) -> bool {
        self.url.is_none()
    }
}

/// The URL a local probe reaches the worker's ops server at.
fn readyz_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, addr.port()))
}

/// Succeeds when the worker answers `200`; the error says what it answered instead.
pub async fn healthcheck(
    http_addr: Option<SocketAddr>,
    args: HealthcheckArgs,
) -> anyhow::Result<()> {
    let url = match (&args.url, http_addr) {
        (Some(url), _) => url.to_string(),
        (None, Some(addr)) => readyz_url(addr),
        (None, None) => bail!("no --url given and no http.addr configured"),
    };
    bidorch::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        out!("ready: {url}")?;
        return Ok(());
    }
    let excerpt: String = body.chars().take(300).collect();
    bail!("not ready: {url} answered {status}: {excerpt}")
}

#[cfg(test)]
mod tests {
    use super::readyz_url;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        assert_eq!(
            readyz_url("0.0.0.0:9090".parse().unwrap()),
            "http://127.0.0.1:9090/readyz"
        );
        assert_eq!(
            readyz_url("[::]:9090".parse().unwrap()),
            "http://[::1]:9090/readyz"
        );
        assert_eq!(
            readyz_url("10.1.2.3:8080".parse().unwrap()),
            "http://10.1.2.3:8080/readyz"
        );
    }
}
