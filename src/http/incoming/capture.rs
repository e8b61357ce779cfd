//! A captured request as event data, and back: `capture` keeps the body's exact bytes
//! (`json` on one line, else `text` or `base64`), `restore` gives back what `herald forward`
//! replays, never with credentials.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use serde_json::value::RawValue;

/// Headers never copied into the event: they carry credentials meant for Herald, not for
/// every subscriber of the channel.
const PRIVATE_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The captured request as event data:
/// `{"method","path","query","headers":{..},"encoding":"json"|"text"|"base64","body"}`.
pub fn capture(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> String {
    let mut merged: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        if PRIVATE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        merged
            .entry(name.as_str())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let head = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query().unwrap_or(""),
        "headers": merged,
    })
    .to_string();
    let (encoding, encoded) = encode_body(body);
    // `head` is an object: splice the encoding and body in before its closing brace, so a
    // JSON body stays the exact bytes it came as.
    let mut out = String::with_capacity(head.len() + encoded.len() + 32);
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"encoding\":\"");
    out.push_str(encoding);
    out.push_str("\",\"body\":");
    out.push_str(&encoded);
    out.push('}');
    out
}

/// A captured request, restored: what `herald forward` replays.
#[derive(Debug, PartialEq, Eq)]
pub struct Restored {
    pub method: String,
    pub query: String,
    /// Without hop-by-hop and length headers (the replaying client sets its own).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The inverse of [`capture`], from an event's `data`.
pub fn restore(data: &str) -> Result<Restored, String> {
    #[derive(serde::Deserialize)]
    struct Captured<'a> {
        method: String,
        #[serde(default)]
        query: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        encoding: String,
        #[serde(borrow)]
        body: &'a RawValue,
    }
    let c: Captured =
        serde_json::from_str(data).map_err(|e| format!("not a captured request: {e}"))?;
    let body = match c.encoding.as_str() {
        "json" => c.body.get().as_bytes().to_vec(),
        "text" => serde_json::from_str::<String>(c.body.get())
            .map_err(|e| e.to_string())?
            .into_bytes(),
        "base64" => {
            let text: String = serde_json::from_str(c.body.get()).map_err(|e| e.to_string())?;
            STANDARD.decode(text).map_err(|e| e.to_string())?
        }
        other => return Err(format!("unknown body encoding {other:?}")),
    };
    const HOP: [&str; 8] = [
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    ];
    // Credentials are never replayed, whatever the event says: capture leaves them out, so
    // one present here was put there by someone else.
    let headers = c
        .headers
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !HOP.contains(&k.as_str()) && !PRIVATE_HEADERS.contains(&k.as_str())
        })
        .collect();
    Ok(Restored {
        method: c.method,
        query: c.query,
        headers,
        body,
    })
}

/// `json` only when the body is one JSON value with nothing around it (surrounding
/// whitespace would be lost by embedding) and on one line (an envelope never holds a raw CR
/// or LF, so a pretty-printed body's line breaks would become spaces and its signature would
/// no longer verify); `text` for other UTF-8; `base64` for the rest.
fn encode_body(body: &[u8]) -> (&'static str, String) {
    let one_line = !body.iter().any(|&b| b == b'\n' || b == b'\r');
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
        if raw.get().len() == body.len() && one_line {
            return ("json", raw.get().to_string());
        }
    }
    match std::str::from_utf8(body) {
        Ok(text) => (
            "text",
            serde_json::to_string(text).expect("a string serializes"),
        ),
        Err(_) => ("base64", format!("\"{}\"", STANDARD.encode(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::incoming::verify::tests::headers;

    #[test]
    fn bodies_keep_their_exact_bytes() {
        let get = |body: &[u8]| {
            let data = capture(
                &Method::POST,
                &"/v1/hooks/x?a=1".parse().unwrap(),
                &HeaderMap::new(),
                body,
            );
            serde_json::from_str::<serde_json::Value>(&data).unwrap()
        };
        let v = get(br#"{"b": [1, 2.50]}"#);
        assert_eq!(
            (v["encoding"].as_str(), v["query"].as_str()),
            (Some("json"), Some("a=1"))
        );
        let data = capture(
            &Method::POST,
            &"/h".parse().unwrap(),
            &HeaderMap::new(),
            br#"{"b": [1, 2.50]}"#,
        );
        assert!(data.ends_with(r#""body":{"b": [1, 2.50]}}"#), "{data}");
        // Valid JSON with a trailing newline is kept as text: embedding would lose the newline.
        assert_eq!(get(b"{\"a\":1}\n")["body"], "{\"a\":1}\n");
        // Pretty-printed JSON too: its line breaks cannot go into an envelope.
        let pretty = b"{\r\n  \"a\": [\n    1\n  ]\n}";
        let v = get(pretty);
        assert_eq!(v["encoding"], "text");
        assert_eq!(v["body"].as_str().unwrap().as_bytes(), pretty);
        assert_eq!(get(b"a=1&b=2")["encoding"], "text");
        let v = get(&[0xff, 0x00, 0x10]);
        assert_eq!(v["encoding"], "base64");
        assert_eq!(
            STANDARD.decode(v["body"].as_str().unwrap()).unwrap(),
            [0xff, 0x00, 0x10]
        );
        assert_eq!(get(b"")["encoding"], "text");
    }

    #[test]
    fn restore_gives_back_the_captured_request() {
        let h = headers(&[
            ("x-hub-signature-256", "sha256=00".into()),
            ("host", "example.com".into()),
            ("content-length", "3".into()),
        ]);
        let uri: Uri = "/v1/hooks/x?a=1".parse().unwrap();
        for body in [&b"{\"k\": 1}"[..], b"plain text", &[0, 255, 7]] {
            let r = restore(&capture(&Method::PUT, &uri, &h, body)).unwrap();
            assert_eq!(r.body, body);
            assert_eq!((r.method.as_str(), r.query.as_str()), ("PUT", "a=1"));
            assert_eq!(
                r.headers,
                vec![("x-hub-signature-256".to_string(), "sha256=00".to_string())]
            );
        }
        assert!(restore("{\"seq\":1}").is_err());
    }

    #[test]
    fn credentials_are_not_copied_into_the_event() {
        let h = headers(&[
            ("authorization", "Bearer k".into()),
            ("cookie", "herald_token=t".into()),
            ("x-custom", "1".into()),
        ]);
        let data = capture(&Method::POST, &"/h".parse().unwrap(), &h, b"");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["headers"], json!({"x-custom": "1"}));
    }
}
