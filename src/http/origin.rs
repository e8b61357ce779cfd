//! Which browsers and host names may drive this server: CORS, the `Origin` check on unsafe
//! methods and WebSocket upgrades, and, while Herald runs open (no keys), the loopback-only
//! rule for `Host` and `Origin`.
//!
//! Why: an open Herald on a developer's laptop is reachable by every web page the developer
//! visits (a page may POST to 127.0.0.1, or rebind its own DNS name to 127.0.0.1 and then read
//! responses as same-origin). Loopback `Host` values defeat rebinding; loopback `Origin`
//! values keep other sites' pages out. With keys, credentials do that job, and a cross-site
//! page can still not make the browser send one: API keys count only in a header and the
//! cookie only on reads (see `auth`), and unsafe methods from a foreign origin are refused.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Is `host` (a `Host` header value, port optional) a loopback name?
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Is `origin` (`scheme://host[:port]`) one served from loopback?
pub fn is_loopback_origin(origin: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|host| !host.contains('/') && is_loopback_host(host))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl AppState {
    /// May a browser page from this request's `Origin` drive the server? Requests without
    /// one are not from a page (or are same-origin navigations) and pass; so do same-origin
    /// pages (while open, their `Host` has already passed `host_allowed`, which is what stops
    /// DNS rebinding), listed origins, and while open any loopback origin.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = header_str(headers, header::ORIGIN) else {
            return true;
        };
        let allowed = &self.config.server.allowed_origins;
        let host = header_str(headers, header::HOST);
        let same_origin = host.is_some() && origin.split_once("://").map(|(_, h)| h) == host;
        same_origin
            || allowed.iter().any(|o| o == origin || o == "*")
            || (self.auth.is_open() && is_loopback_origin(origin))
    }

    /// While open, only loopback host names (and `server.allowed_hosts`) are served.
    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        if !self.auth.is_open() {
            return true;
        }
        let Some(host) = header_str(headers, header::HOST) else {
            return true; // HTTP/1.0 without Host: not a browser
        };
        is_loopback_host(host)
            || self
                .config
                .server
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host) || host_name(host).eq_ignore_ascii_case(h))
    }
}

fn host_name(host: &str) -> &str {
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware: refuses a foreign `Host` while open, a foreign `Origin` on unsafe methods
/// (and on anything while open), and a `Sec-Fetch-Site: cross-site` write with no allowed
/// `Origin`.
pub async fn guard(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !app.host_allowed(headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "Herald runs open (no keys), so it answers only to loopback host names \
             (localhost, 127.0.0.1, [::1]); add this name to server.allowed_hosts, or \
             configure auth.api_keys",
        )
        .into_response();
    }
    let unsafe_method = is_unsafe(request.method());
    if (unsafe_method || app.auth.is_open()) && !app.origin_allowed(headers) {
        return forbidden_origin(headers);
    }
    let cross_site = header_str(headers, header::HeaderName::from_static("sec-fetch-site"))
        == Some("cross-site");
    if unsafe_method && cross_site && headers.get(header::ORIGIN).is_none() {
        return forbidden_origin(headers);
    }
    next.run(request).await
}

/// The refusal is readable by the refused page itself (CORS allows it this one answer), so
/// a client there can say why instead of "network error". It grants nothing: the request
/// was not served.
pub fn forbidden_origin(headers: &axum::http::HeaderMap) -> Response {
    let mut response = ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        "this Origin may not call Herald: add it to server.allowed_origins",
    )
    .into_response();
    if let Some(origin) = headers.get(header::ORIGIN) {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    response
}

/// CORS for the HTTP API and SSE, from `server.allowed_origins`; with no list, loopback
/// origins while open and none otherwise (same-origin pages need no CORS).
pub fn cors(state: &AppState) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed = &state.config.server.allowed_origins;
    let origin = if allowed.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<String> = allowed.clone();
        let open = state.auth.is_open();
        AllowOrigin::predicate(move |origin, _| {
            let origin = origin.to_str().unwrap_or("");
            list.iter().any(|o| o == origin) || (open && is_loopback_origin(origin))
        })
    };
    // With a connect hook, a page on an allowed origin may send its cookies (the app's
    // session is the identity): credentials, never for "*", which would let any site in.
    let credentials = state.proxy.as_ref().is_some_and(|p| p.asks_connect())
        && !allowed.is_empty()
        && !allowed.iter().any(|o| o == "*");
    CorsLayer::new()
        .allow_origin(origin)
        .allow_credentials(credentials)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            "last-event-id".parse().expect("static header"),
        ])
        .expose_headers([header::RETRY_AFTER])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.9.8.7:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.com",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://127.0.0.1"));
        assert!(!is_loopback_origin("http://evil.com"));
        assert!(!is_loopback_origin("null"));
        assert!(!is_loopback_origin("http://localhost.evil.com"));
    }
}
