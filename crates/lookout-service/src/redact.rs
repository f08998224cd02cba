//! Credentials out of everything a service shows: logs, errors, metrics labels, HTTP answers.
//!
//! URLs carry credentials in two places, `scheme://user:password@host/…` and query parameters
//! such as `?password=…`; [`url`] masks both, [`secrets_of`] lists them so that text written by
//! others (ffmpeg's error output) can be [`mask`]ed too.

/// What a masked credential is shown as.
pub const MASK: &str = "***";

/// Query parameters whose values are credentials (compared without regard to case).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "sslpassword",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
];

/// Where the credentials of `url` are: byte ranges of the password and of secret query values.
fn secret_ranges(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return ranges };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if let Some(at) = authority.rfind('@')
        && let Some(colon) = authority[..at].find(':')
        && colon + 1 < at
    {
        ranges.push(scheme_end + colon + 1..scheme_end + at);
    }
    if let Some(q) = url.find('?') {
        let query_end = url[q..].find('#').map_or(url.len(), |i| q + i);
        let mut start = q + 1;
        for pair in url[q + 1..query_end].split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && !value.is_empty()
                && SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(key))
            {
                let value_start = start + key.len() + 1;
                ranges.push(value_start..value_start + value.len());
            }
            start += pair.len() + 1;
        }
    }
    ranges
}

/// `url` with its password and secret query values replaced by [`MASK`]:
/// `rtsp://admin:***@cam/stream`, `postgres://db/x?user=u&password=***`. Anything that is not
/// a URL is returned as it is.
pub fn url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut last = 0;
    for r in secret_ranges(url) {
        out.push_str(&url[last..r.start]);
        out.push_str(MASK);
        last = r.end;
    }
    out.push_str(&url[last..]);
    out
}

/// The credentials in `url`, for [`mask`].
pub fn secrets_of(url: &str) -> Vec<String> {
    secret_ranges(url).into_iter().map(|r| url[r].to_owned()).collect()
}

/// `text` with every occurrence of each secret replaced by [`MASK`].
pub fn mask(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), MASK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_the_authority_are_masked() {
        assert_eq!(url("rtsp://admin:hunter2@10.0.0.5:554/s1"), "rtsp://admin:***@10.0.0.5:554/s1");
        assert_eq!(url("postgres://lookout:p%40ss@db/x"), "postgres://lookout:***@db/x");
        // A password holding '@' is cut at the last one, which ends the user information.
        assert_eq!(url("http://u:a@b@host/x"), "http://u:***@host/x");
        assert_eq!(url("rtsp://admin@cam/s"), "rtsp://admin@cam/s", "no password");
        assert_eq!(url("rtsp://cam/s?x=a@b:c"), "rtsp://cam/s?x=a@b:c", "not the authority");
    }

    #[test]
    fn secret_query_values_are_masked() {
        assert_eq!(
            url("postgres://db:5432/x?user=lookout&password=hunter2&sslmode=require"),
            "postgres://db:5432/x?user=lookout&password=***&sslmode=require"
        );
        assert_eq!(url("https://cam/live?TOKEN=abc#top"), "https://cam/live?TOKEN=***#top");
        assert_eq!(url("sqlite://lookout.db?mode=rwc"), "sqlite://lookout.db?mode=rwc");
        assert_eq!(url("images:/opt/lookout/samples"), "images:/opt/lookout/samples");
    }

    #[test]
    fn text_written_by_others_is_masked_with_the_secrets_of_its_url() {
        let u = "rtsp://admin:hunter2@cam/s?token=t0k3n";
        let secrets = secrets_of(u);
        assert_eq!(secrets, ["hunter2", "t0k3n"]);
        let line = format!("[rtsp @ 0x55] method DESCRIBE failed: 401 Unauthorized ({u})");
        let masked = mask(&line, &secrets);
        assert!(!masked.contains("hunter2") && !masked.contains("t0k3n"), "{masked}");
        assert!(masked.contains("rtsp://admin:***@cam/s?token=***"), "{masked}");
    }
}
