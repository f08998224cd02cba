//! Optional authentication and the headers every response carries.
//!
//! With `--auth-token`, every request must carry the token, either as
//! `Authorization: Bearer TOKEN` (scripts, `curl -H`) or as HTTP Basic credentials with the
//! token as the password and any user name (browsers). A request without it gets 401 with
//! `WWW-Authenticate: Basic`, so the browser asks for it once and then sends it with the page,
//! its streams and its event stream. Tokens are compared in constant time.
//!
//! Every response, refusals included, says `X-Content-Type-Options: nosniff` and
//! `Cross-Origin-Resource-Policy: same-origin` (no other site may embed the streams or
//! snapshots).

use std::{fmt, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;

use crate::metrics as m;

/// The realm browsers show when they ask for the token.
const REALM: &str = "Basic realm=\"Lookout viewer\", charset=\"UTF-8\"";

/// A secret token; never shown in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Arc<str>);

impl AuthToken {
    /// A token; `None` when it is empty (no authentication).
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self(token.into()))
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let differ = expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        differ == 0 && expected.len() == given.len()
    }

    /// Whether a request's headers carry this token.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some(space) = value.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, credentials) = (&value[..space], value[space + 1..].trim_ascii());
        if scheme.eq_ignore_ascii_case(b"bearer") {
            return self.matches(credentials);
        }
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return false;
        };
        decoded
            .iter()
            .position(|b| *b == b':')
            .is_some_and(|colon| self.matches(&decoded[colon + 1..]))
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(***)")
    }
}

/// Refuses requests without the token (when there is one).
pub(crate) async fn require_token(
    State(token): State<Option<AuthToken>>,
    request: Request,
    next: Next,
) -> Response {
    match &token {
        Some(token) if !token.admits(request.headers()) => {
            metrics::counter!(m::UNAUTHORIZED).increment(1);
            let mut response = (
                StatusCode::UNAUTHORIZED,
                "this viewer needs its token: as the password of the browser's sign-in \
                 (any user name), or as `Authorization: Bearer TOKEN`\n",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        _ => next.run(request).await,
    }
}

/// Adds the headers every response carries.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        h
    }

    fn basic(user_password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_password))
    }

    #[test]
    fn the_token_is_accepted_as_bearer_or_as_the_basic_password() {
        let t = AuthToken::new("s3cret-token").unwrap();
        assert!(t.admits(&headers("Bearer s3cret-token")));
        assert!(t.admits(&headers("bearer  s3cret-token ")));
        assert!(t.admits(&headers(&basic("anyone:s3cret-token"))));
        assert!(t.admits(&headers(&basic(":s3cret-token"))));
        assert!(t.admits(&headers(&basic("user:s3cret-token").replace("Basic", "BASIC"))));

        assert!(!t.admits(&HeaderMap::new()));
        assert!(!t.admits(&headers("Bearer s3cret-toke")));
        assert!(!t.admits(&headers("Bearer s3cret-token2")));
        assert!(!t.admits(&headers("Bearers3cret-token")));
        assert!(!t.admits(&headers(&basic("s3cret-token:nope"))));
        assert!(!t.admits(&headers(&basic("s3cret-token"))), "no colon, no password");
        assert!(!t.admits(&headers("Basic %%%")));
        assert!(!t.admits(&headers("Token s3cret-token")));
    }

    #[test]
    fn an_empty_token_means_no_authentication_and_a_token_is_never_shown() {
        assert!(AuthToken::new("").is_none());
        let t = AuthToken::new("hunter2").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
