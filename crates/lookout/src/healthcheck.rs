//! `lookout healthcheck URL`: exit 0 when an HTTP GET answers 200, for container
//! healthchecks in images that carry no curl.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

#[derive(Debug, clap::Args)]
pub(crate) struct HealthcheckArgs {
    /// An http:// URL, e.g. http://127.0.0.1:9464/readyz.
    url: String,

    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = lookout_service::parse_duration)]
    timeout: Duration,
}

pub(crate) async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let rest = args.url.strip_prefix("http://").context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let status = tokio::time::timeout(args.timeout, get(authority, path))
        .await
        .with_context(|| format!("{} did not answer within {:?}", args.url, args.timeout))??;
    if status != 200 {
        bail!("{} answered {status}", args.url);
    }
    Ok(())
}

/// The status code of `GET path` on `authority` (host:port).
pub(crate) async fn status(authority: &str, path: &str) -> anyhow::Result<u16> {
    tokio::time::timeout(Duration::from_secs(2), get(authority, path)).await.context("no answer")?
}

async fn get(authority: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))
}
