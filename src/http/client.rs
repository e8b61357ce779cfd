//! `GET /v1/client.js` (and `/v1/client.d.ts`): the JavaScript client, compiled into the
//! binary so its version is the server's. An ES module any page may import, from any
//! origin (it is public code and carries no credential), cached by its ETag.
//!
//! What is served is `clients/js/herald.min.js`, the source minified by esbuild and
//! committed (the client's Node tests check it is the build of `herald.js`), so building
//! Herald needs no Node. A client that accepts gzip gets it gzipped.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[cfg(test)]
const CLIENT_SOURCE: &str = include_str!("../../clients/js/herald.js");
const CLIENT_JS: &str = include_str!("../../clients/js/herald.min.js");
const CLIENT_DTS: &str = include_str!("../../clients/js/herald.d.ts");

/// One file in both representations, each with its own tag (a cache must not answer a
/// gzip request with the plain body's 304 or the other way round).
struct Asset {
    plain: &'static str,
    plain_tag: String,
    gzip: Vec<u8>,
    gzip_tag: String,
    content_type: &'static str,
}

impl Asset {
    fn new(plain: &'static str, content_type: &'static str) -> Asset {
        let tag = etag(plain);
        Asset {
            plain,
            gzip: gzip(plain.as_bytes()),
            gzip_tag: format!("{}-gzip\"", tag.trim_end_matches('"')),
            plain_tag: tag,
            content_type,
        }
    }
}

/// Compressed once, at the first request, not per response as a compression layer
/// (tower-http's) would: the body never changes while the binary runs.
static JS: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(CLIENT_JS, "text/javascript; charset=utf-8"));
static DTS: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(CLIENT_DTS, "application/typescript; charset=utf-8"));

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

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// Whether `Accept-Encoding` takes gzip: listed (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let gzipped = accepts_gzip(headers);
    let tag = if gzipped {
        &asset.gzip_tag
    } else {
        &asset.plain_tag
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzipped {
        asset.gzip.clone().into_response()
    } else {
        asset.plain.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::ETAG, HeaderValue::from_str(tag).expect("ASCII"));
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
    serve(&JS, &headers)
}

pub async fn dts(headers: HeaderMap) -> Response {
    serve(&DTS, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client says the server's version (`VERSION` in herald.js), and the served file
    /// was built from a source that does.
    #[test]
    fn the_client_carries_the_server_version() {
        let want = format!("const VERSION = \"{}\";", env!("CARGO_PKG_VERSION"));
        assert!(
            CLIENT_SOURCE.contains(&want),
            "update VERSION in clients/js/herald.js"
        );
        let minified = format!("\"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            CLIENT_JS.contains(&minified),
            "rebuild clients/js/herald.min.js (npm run build in clients/js)"
        );
    }

    #[test]
    fn gzip_is_taken_unless_refused() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br, zstd"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, deflate"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
