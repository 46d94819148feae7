//! Request logging that never writes a credential: the per-request span carries the method, the
//! path and the query with credential values (`token`, `access_token`, `sig`, ...) replaced by
//! `[redacted]`, and no headers at all (so `Authorization` and `Cookie` never reach a log).

use axum::http::{Request, Uri};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;

/// Query keys whose values are credentials (compared ignoring ASCII case). `sig` is included: a
/// signed media URL is a bearer capability for its file until it expires.
const SECRET_KEYS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "sig",
    "signature",
    "password",
    "passwd",
    "secret",
    "auth",
    "authorization",
    "code",
    "session",
];

const REDACTED: &str = "[redacted]";

fn is_secret_key(key: &str) -> bool {
    // The raw key may itself be percent-encoded (`%74oken`); decode it before comparing.
    let decoded: String = form_urlencoded::parse(key.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default();
    SECRET_KEYS
        .iter()
        .any(|s| decoded.eq_ignore_ascii_case(s) || key.eq_ignore_ascii_case(s))
}

/// The query string with every credential value replaced; other pairs are kept as sent.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `path?query` as it may be logged.
pub fn loggable_uri(uri: &Uri) -> String {
    match uri.query() {
        Some(q) => format!("{}?{}", uri.path(), redact_query(q)),
        None => uri.path().to_string(),
    }
}

type MakeSpan = fn(&Request<axum::body::Body>) -> tracing::Span;

fn make_span(req: &Request<axum::body::Body>) -> tracing::Span {
    // The same span tower-http's default makes (DEBUG, `request`), minus the secrets.
    tracing::debug_span!(
        "request",
        method = %req.method(),
        uri = %loggable_uri(req.uri()),
        version = ?req.version(),
    )
}

/// The HTTP trace layer `limner serve` wraps the API in.
pub fn trace_layer() -> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, MakeSpan> {
    TraceLayer::new_for_http().make_span_with(make_span as MakeSpan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_the_rest_kept() {
        assert_eq!(redact_query("token=abc"), "token=[redacted]");
        assert_eq!(
            redact_query("limit=5&Token=abc&access_token=x&campaign_id=c1"),
            "limit=5&Token=[redacted]&access_token=[redacted]&campaign_id=c1"
        );
        assert_eq!(
            redact_query("expires=123&sig=deadbeef"),
            "expires=123&sig=[redacted]"
        );
        assert_eq!(redact_query("%74oken=abc"), "%74oken=[redacted]");
        // A bare key or an empty query leaks nothing and is kept.
        assert_eq!(redact_query("async"), "async");
        assert_eq!(redact_query(""), "");
        let uri: Uri = "/?token=s3cret&x=1".parse().unwrap();
        assert_eq!(loggable_uri(&uri), "/?token=[redacted]&x=1");
        let uri: Uri = "/api/characters".parse().unwrap();
        assert_eq!(loggable_uri(&uri), "/api/characters");
    }
}
