//! Webhooks: each alert is POSTed as JSON (`content-type: application/json`) to the URL.
//!
//! Headers: `x-lookout-episode` (the episode id, for dropping duplicates) and, when a secret
//! is configured (`--webhook-secret`), `x-lookout-signature-256: sha256=<hex>`, the
//! HMAC-SHA256 of the exact body bytes with the secret as key, as GitHub signs its webhooks.
//! A receiver recomputes it over the body it read and compares in constant time.
//!
//! A 2xx answer delivers the alert. A connection failure, a timeout, 408, 429 or a 5xx is
//! transient (the alert is offered again after a backoff of 100 ms doubling to 5 s); any
//! other status refuses the alert for good (it is dead-lettered with the answer).

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use lookout_proto::v1::Alert;
use reqwest::{StatusCode, Url};
use sha2::Sha256;

use super::{Delivery, Sink};
use crate::{AlertsError, SinkError};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-lookout-signature-256";
/// The episode header.
pub const EPISODE_HEADER: &str = "x-lookout-episode";

/// The webhook sink.
#[derive(Debug)]
pub struct WebhookSink {
    url: Url,
    name: String,
    secret: Option<String>,
    client: reqwest::Client,
}

impl WebhookSink {
    /// A sink posting to `url`, signing with `secret` when given.
    pub fn new(url: Url, secret: Option<String>, timeout: Duration) -> Result<Self, AlertsError> {
        let name = lookout_service::redact::url(url.as_str());
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| AlertsError::Setup { sink: name.clone(), reason: e.to_string() })?;
        Ok(Self { url, name, secret, client })
    }

    async fn post(&self, alert: &Alert, body: &[u8]) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EPISODE_HEADER, &alert.episode_id)
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, body));
        }
        let response = request
            .send()
            .await
            .map_err(|e| SinkError::Transient(format!("{}: {}", self.name, e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let reason = format!(
            "{} answered {status}: {}",
            self.name,
            text.chars().take(200).collect::<String>()
        );
        let transient = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        Err(if transient { SinkError::Transient(reason) } else { SinkError::Permanent(reason) })
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Sink for WebhookSink {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert, body: &'a [u8]) -> Delivery<'a> {
        Box::pin(self.post(alert, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
