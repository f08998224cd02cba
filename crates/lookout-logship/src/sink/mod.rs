//! Where records go: [`stdout`](mod@stdout), [`file`](mod@file) and [`elasticsearch`]
//! (also OpenSearch).

pub mod elasticsearch;
pub mod file;
pub mod stdout;

use std::{fmt, path::PathBuf, str::FromStr};

use reqwest::Url;

use crate::{LogshipError, SinkError, record::Entry};

/// A sink as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// `stdout`.
    Stdout,
    /// `file:DIR`.
    File(PathBuf),
    /// `elasticsearch:URL`.
    Elasticsearch(Url),
    /// `opensearch:URL`.
    OpenSearch(Url),
}

impl SinkSpec {
    /// The kind, used as the `sink` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::OpenSearch(_) => "opensearch",
        }
    }
}

impl FromStr for SinkSpec {
    type Err = LogshipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |reason: &str| LogshipError::BadSink { spec: s.to_owned(), reason: reason.into() };
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "stdout" if rest.is_empty() => Ok(Self::Stdout),
            "file" if !rest.is_empty() => Ok(Self::File(PathBuf::from(rest))),
            "file" => Err(bad("expected file:DIR")),
            "elasticsearch" | "opensearch" => {
                let url = Url::parse(rest)
                    .map_err(|e| bad(&format!("{e}: expected {kind}:http(s)://HOST:PORT")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(bad("the URL must be http:// or https://"));
                }
                Ok(if kind == "opensearch" {
                    Self::OpenSearch(url)
                } else {
                    Self::Elasticsearch(url)
                })
            }
            _ => Err(bad("expected stdout, file:DIR, elasticsearch:URL or opensearch:URL")),
        }
    }
}

impl fmt::Display for SinkSpec {
    /// Never shows credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::File(dir) => write!(f, "file:{}", dir.display()),
            Self::Elasticsearch(url) | Self::OpenSearch(url) => {
                write!(f, "{}:{}", self.kind(), elasticsearch::without_credentials(url))
            }
        }
    }
}

/// What a sink did with one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Accepted.
    Written,
    /// Not accepted this time (the server was busy): offered again after a backoff.
    Retry(String),
    /// Never acceptable (the server refused it): dead-lettered with this reason.
    Refused(String),
}

/// An open sink.
#[derive(Debug)]
pub enum Sink {
    /// Standard output.
    Stdout(stdout::StdoutSink),
    /// JSON-lines files.
    File(file::FileSink),
    /// Elasticsearch or OpenSearch.
    Elastic(elasticsearch::ElasticSink),
}

impl Sink {
    /// Its name, as given on the command line (without credentials).
    pub fn name(&self) -> &str {
        match self {
            Self::Stdout(s) => s.name(),
            Self::File(s) => s.name(),
            Self::Elastic(s) => s.name(),
        }
    }

    /// Its kind, the `sink` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdout(_) => "stdout",
            Self::File(_) => "file",
            Self::Elastic(s) => s.kind(),
        }
    }

    /// Writes a batch. `Ok` holds one result per entry, in order; `Err` means that nothing
    /// can be assumed written and the whole batch is to be retried.
    pub async fn write(&mut self, entries: &[&Entry]) -> Result<Vec<ItemResult>, SinkError> {
        match self {
            Self::Stdout(s) => {
                s.write(entries).await.map(|()| vec![ItemResult::Written; entries.len()])
            }
            Self::File(s) => {
                s.write(entries).await.map(|()| vec![ItemResult::Written; entries.len()])
            }
            Self::Elastic(s) => s.write(entries).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("stdout".parse::<SinkSpec>().unwrap(), SinkSpec::Stdout);
        assert_eq!("file:./logs".parse::<SinkSpec>().unwrap(), SinkSpec::File("./logs".into()));
        let es: SinkSpec = "elasticsearch:https://elastic:secret@es.example:9200".parse().unwrap();
        assert_eq!(es.to_string(), "elasticsearch:https://es.example:9200/");
        let os: SinkSpec = "opensearch:http://127.0.0.1:9200".parse().unwrap();
        assert_eq!(os.kind(), "opensearch");
        for bad in
            ["file:", "file", "stdout:x", "kafka:x", "elasticsearch:nope", "opensearch:ftp://x"]
        {
            assert!(bad.parse::<SinkSpec>().is_err(), "{bad}");
        }
    }
}
