//! The `elasticsearch:URL` and `opensearch:URL` sinks: the `_bulk` API, one daily index per
//! UTC day of the records (`lookout-logs-2026.05.01`), documents in Elastic Common Schema.
//!
//! Each record is a `create` action with a document id made of its topic, partition, offset
//! and Kafka timestamp, so a record delivered twice (at-least-once) is stored once: the second
//! `create` answers 409, which counts as written.
//!
//! Per-item results of the bulk response: 2xx and 409 are written; 429 and 5xx are retried
//! (only those items); any other error (a mapping conflict, 400 `mapper_parsing_exception`) is
//! refused for good and the record goes to the dead-letter topic with the server's reason. A
//! whole request that fails (connection, timeout, 429, 5xx, any other status) is retried.

use std::{path::PathBuf, time::Duration};

use reqwest::{
    Client, Url,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};
use serde_json::Value;

use crate::{
    LogshipError, SinkError,
    record::{Entry, dotted_day, ecs_document},
    sink::ItemResult,
};

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of an error body is kept in an error message.
const BODY_EXCERPT: usize = 300;

/// Which server the sink talks to; they share the bulk API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Elasticsearch.
    Elasticsearch,
    /// OpenSearch.
    OpenSearch,
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct ElasticConfig {
    /// Base URL; `user:password@` in it is sent as basic authentication.
    pub url: Url,
    /// Elasticsearch or OpenSearch.
    pub flavour: Flavour,
    /// Index name before the date, e.g. `lookout-logs-`.
    pub index_prefix: String,
    /// Sent as `Authorization: ApiKey …` when set.
    pub api_key: Option<String>,
    /// A PEM CA certificate to trust besides the system's.
    pub ca_cert: Option<PathBuf>,
    /// Timeout of one bulk request.
    pub timeout: Duration,
}

/// The Elasticsearch or OpenSearch sink.
#[derive(Debug)]
pub struct ElasticSink {
    name: String,
    flavour: Flavour,
    client: Client,
    bulk_url: Url,
    auth: Option<Auth>,
    index_prefix: String,
}

#[derive(Debug)]
enum Auth {
    Basic { user: String, password: String },
    Header(HeaderValue),
}

impl ElasticSink {
    /// Builds the HTTP client. Nothing is sent yet.
    pub fn new(config: ElasticConfig) -> Result<Self, LogshipError> {
        let kind = match config.flavour {
            Flavour::Elasticsearch => "elasticsearch",
            Flavour::OpenSearch => "opensearch",
        };
        let base = without_credentials(&config.url);
        let name = format!("{kind}:{base}");
        let client_error = |reason: String| LogshipError::Client { sink: name.clone(), reason };
        let mut builder =
            Client::builder().timeout(config.timeout).connect_timeout(CONNECT_TIMEOUT);
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| client_error(format!("cannot read {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| client_error(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| client_error(e.to_string()))?;
        let auth = match (&config.api_key, config.url.username()) {
            (Some(key), _) => {
                let mut value = HeaderValue::from_str(&format!("ApiKey {key}"))
                    .map_err(|e| client_error(format!("bad API key: {e}")))?;
                value.set_sensitive(true);
                Some(Auth::Header(value))
            }
            (None, "") => None,
            (None, user) => Some(Auth::Basic {
                user: percent_decode(user),
                password: percent_decode(config.url.password().unwrap_or("")),
            }),
        };
        let bulk_url = base.join("_bulk").map_err(|e| client_error(format!("bad URL: {e}")))?;
        Ok(Self {
            name,
            flavour: config.flavour,
            client,
            bulk_url,
            auth,
            index_prefix: config.index_prefix,
        })
    }

    /// `elasticsearch:URL` or `opensearch:URL`, without credentials.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `elasticsearch` or `opensearch`.
    pub fn kind(&self) -> &'static str {
        match self.flavour {
            Flavour::Elasticsearch => "elasticsearch",
            Flavour::OpenSearch => "opensearch",
        }
    }

    /// The index of a record: the prefix and the record's UTC day.
    pub fn index_of(&self, entry: &Entry) -> String {
        format!("{}{}", self.index_prefix, dotted_day(entry.time().date()))
    }

    /// Sends one bulk request with every entry and reads the per-item results.
    pub async fn write(&mut self, entries: &[&Entry]) -> Result<Vec<ItemResult>, SinkError> {
        let body = self.bulk_body(entries);
        let url = self.bulk_url.to_string();
        let mut request =
            self.client.post(self.bulk_url.clone()).header(CONTENT_TYPE, "application/x-ndjson");
        match &self.auth {
            Some(Auth::Basic { user, password }) => {
                request = request.basic_auth(user, Some(password))
            }
            Some(Auth::Header(value)) => request = request.header(AUTHORIZATION, value.clone()),
            None => {}
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|source| SinkError::Request { url: url.clone(), source })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| SinkError::Request { url: url.clone(), source })?;
        if !status.is_success() {
            return Err(SinkError::Status {
                url,
                status: status.as_u16(),
                body: excerpt(&String::from_utf8_lossy(&bytes)),
            });
        }
        let parsed: Value = serde_json::from_slice(&bytes)
            .map_err(|e| SinkError::BadResponse { url: url.clone(), reason: e.to_string() })?;
        item_results(&parsed, entries.len())
            .map_err(|reason| SinkError::BadResponse { url, reason })
    }

    /// NDJSON: an action line and a document line per entry, each ending with a newline.
    fn bulk_body(&self, entries: &[&Entry]) -> String {
        let mut body = String::new();
        for e in entries {
            let action =
                serde_json::json!({ "create": { "_index": self.index_of(e), "_id": e.id() } });
            body.push_str(&action.to_string());
            body.push('\n');
            body.push_str(&ecs_document(e));
            body.push('\n');
        }
        body
    }
}

/// The per-item results of a bulk response, in request order.
fn item_results(response: &Value, expected: usize) -> Result<Vec<ItemResult>, String> {
    let items = response["items"].as_array().ok_or("no items array")?;
    if items.len() != expected {
        return Err(format!("{} items for {expected} actions", items.len()));
    }
    items
        .iter()
        .map(|item| {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .ok_or("an item without an action")?;
            let status = result["status"].as_u64().ok_or("an item without a status")?;
            let reason = || {
                let error = &result["error"];
                let kind = error["type"].as_str().unwrap_or("error");
                let why = error["reason"].as_str().unwrap_or("");
                format!("{kind}: {why} (status {status})")
            };
            Ok(match status {
                200..=299 | 409 => ItemResult::Written,
                429 | 500..=599 => ItemResult::Retry(reason()),
                _ => ItemResult::Refused(reason()),
            })
        })
        .collect()
}

/// The URL without `user:password@`.
pub fn without_credentials(url: &Url) -> Url {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    if !clean.path().ends_with('/') {
        let path = format!("{}/", clean.path());
        clean.set_path(&path);
    }
    clean
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bulk_items_map_to_results() {
        let response = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [labels.x]"}}},
            {"create": {"status": 503, "error": {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}}},
        ]});
        let results = item_results(&response, 5).unwrap();
        assert_eq!(results[0], ItemResult::Written);
        assert_eq!(results[1], ItemResult::Written, "already stored by an earlier delivery");
        assert!(
            matches!(&results[2], ItemResult::Retry(r) if r.contains("es_rejected_execution_exception"))
        );
        assert_eq!(
            results[3],
            ItemResult::Refused(
                "mapper_parsing_exception: failed to parse field [labels.x] (status 400)".into()
            )
        );
        assert!(matches!(&results[4], ItemResult::Retry(_)));
        assert!(item_results(&response, 4).is_err(), "a count mismatch is not guessed at");
        assert!(item_results(&json!({"took": 1}), 1).is_err());
    }

    #[test]
    fn credentials_become_headers_and_leave_the_url() {
        let sink = ElasticSink::new(ElasticConfig {
            url: Url::parse("https://elastic:p%40ss@es.example:9200/proxy").unwrap(),
            flavour: Flavour::Elasticsearch,
            index_prefix: "lookout-logs-".into(),
            api_key: None,
            ca_cert: None,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(sink.name(), "elasticsearch:https://es.example:9200/proxy/");
        assert_eq!(sink.bulk_url.as_str(), "https://es.example:9200/proxy/_bulk");
        assert!(matches!(
            sink.auth,
            Some(Auth::Basic { ref user, ref password }) if user == "elastic" && password == "p@ss"
        ));
    }
}
