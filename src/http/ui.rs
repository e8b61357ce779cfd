//! `GET /`: the operator console, and `GET /portal`: the consumer portal. Static files compiled
//! into the binary (no build step, no framework); the pages talk to Herald only through the
//! public API, so they can do nothing a client with the same credential could not.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const CONSOLE_JS: &str = include_str!("ui/console.js");
const APP_CSS: &str = include_str!("ui/app.css");
const PORTAL: &str = include_str!("ui/portal.html");
const PORTAL_JS: &str = include_str!("ui/portal.js");

/// Scripts and styles only from this origin, no framing: the page holds a key in an input.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn console_js() -> Response {
    asset(CONSOLE_JS, "text/javascript; charset=utf-8")
}

/// The portal may be framed by the origins the operator lists (a SaaS embeds it for its
/// customers); everything else in its policy is the console's.
pub async fn portal(axum::extract::State(app): axum::extract::State<super::AppState>) -> Response {
    let mut response = asset(PORTAL, "text/html; charset=utf-8");
    let ancestors = &app.config.server.portal_frame_ancestors;
    let frame = if ancestors.is_empty() {
        "'none'".to_string()
    } else {
        ancestors.join(" ")
    };
    let csp = CSP.replace(
        "frame-ancestors 'none'",
        &format!("frame-ancestors {frame}"),
    );
    // Checked at start (origins only), so this cannot fail; a bad value would fall back to
    // the console's policy (no framing) rather than none.
    if let Ok(v) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

pub async fn portal_js() -> Response {
    asset(PORTAL_JS, "text/javascript; charset=utf-8")
}

pub async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// Browsers ask for it on every page; no icon, and no 404 in their console.
pub async fn favicon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}
