//! `GET /v1/client.js` (and `/v1/client.d.ts`): the JavaScript client, compiled into the
//! binary so its version is the server's. An ES module any page may import, from any
//! origin (it is public code and carries no credential), cached by its ETag.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const CLIENT_JS: &str = include_str!("../../clients/js/herald.js");
const CLIENT_DTS: &str = include_str!("../../clients/js/herald.d.ts");

/// The server's version plus a hash of the file: a new build with an edited client gets a
/// new tag even without a version bump.
fn etag(body: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(body.as_bytes());
    format!(
        "\"{}-{}\"",
        env!("CARGO_PKG_VERSION"),
        hex::encode(&hash[..8])
    )
}

fn serve(body: &'static str, content_type: &'static str, headers: &HeaderMap) -> Response {
    let tag = etag(body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ETAG, HeaderValue::from_str(&tag).expect("ASCII"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300, must-revalidate"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub async fn js(headers: HeaderMap) -> Response {
    serve(CLIENT_JS, "text/javascript; charset=utf-8", &headers)
}

pub async fn dts(headers: HeaderMap) -> Response {
    serve(
        CLIENT_DTS,
        "application/typescript; charset=utf-8",
        &headers,
    )
}

#[cfg(test)]
mod tests {
    /// The client says the server's version (`VERSION` in herald.js).
    #[test]
    fn the_client_carries_the_server_version() {
        let want = format!("const VERSION = \"{}\";", env!("CARGO_PKG_VERSION"));
        assert!(
            super::CLIENT_JS.contains(&want),
            "update VERSION in clients/js/herald.js"
        );
    }
}
