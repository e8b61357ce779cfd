//! `herald webhook ...`: endpoint management for people (tables, status in color on a
//! terminal) and for scripts (`--json`: the server's reply as is).

use std::io::IsTerminal;

use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

use super::args::{EndpointSettings, WebhookClientArgs, WebhookCommand};
use super::client::{client, exchange, refused};

/// How a reply is shown to a person.
enum View {
    Endpoint,
    Endpoints,
    /// A page of attempts, asked for with this limit.
    Deliveries(u32),
    Attempt,
    Recovered,
    Line(String),
}

pub(super) async fn webhook(command: WebhookCommand) -> anyhow::Result<()> {
    let (out, method, path, body, view) = request(command);
    let client_args = &out.client;
    let (http, headers) = client(client_args)?;
    let url = format!("{}{path}", client_args.server.trim_end_matches('/'));
    let mut request = http.request(method, &url).headers(headers);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let (status, text) = exchange(client_args, request, &url).await?;
    if !status.is_success() {
        return Err(refused(status, &text));
    }
    let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if reply["secret"].is_string() {
        // Said on stderr, so `--json` output stays one JSON value.
        eprintln!(
            "herald: the signing secret is shown only now; store it where the receiver can \
             verify deliveries with it (`herald webhook rotate` makes a new one)"
        );
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(&reply).unwrap_or(text));
    } else {
        let color = std::io::stdout().is_terminal();
        print!("{}", render(&view, &reply, color));
    }
    // A test delivery that did not get a 2xx is a failure for scripts too.
    if matches!(view, View::Attempt) && reply["status"] != "delivered" {
        bail!(
            "the test delivery failed: {}",
            reply["error"]
                .as_str()
                .map(String::from)
                .or_else(|| reply["status_code"].as_u64().map(|c| format!("HTTP {c}")))
                .unwrap_or_else(|| text_of(&reply["status"]))
        );
    }
    Ok(())
}

fn text_of(v: &Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

type Request = (WebhookClientArgs, Method, String, Option<Value>, View);

fn request(command: WebhookCommand) -> Request {
    use WebhookCommand as W;
    let one = |id: &str| format!("/v1/webhooks/{id}");
    match command {
        W::Add {
            url,
            channels,
            owner,
            settings,
            client,
        } => {
            let mut body = json!({"url": url, "channels": channels});
            if let Some(owner) = owner {
                body["owner"] = owner.into();
            }
            apply(&mut body, settings);
            let path = "/v1/webhooks".into();
            (client, Method::POST, path, Some(body), View::Endpoint)
        }
        W::List { client } => (
            client,
            Method::GET,
            "/v1/webhooks".into(),
            None,
            View::Endpoints,
        ),
        W::Get { id, client } => (client, Method::GET, one(&id), None, View::Endpoint),
        W::Update {
            id,
            url,
            channels,
            settings,
            client,
        } => {
            let mut body = json!({});
            if let Some(u) = url {
                body["url"] = u.into();
            }
            if !channels.is_empty() {
                body["channels"] = channels.into();
            }
            apply(&mut body, settings);
            (client, Method::PATCH, one(&id), Some(body), View::Endpoint)
        }
        W::Delete { id, client } => {
            let done = View::Line(format!("deleted {id}"));
            (client, Method::DELETE, one(&id), None, done)
        }
        W::Enable { id, client } => {
            let body = json!({"enabled": true});
            (client, Method::PATCH, one(&id), Some(body), View::Endpoint)
        }
        W::Disable { id, client } => {
            let body = json!({"enabled": false});
            (client, Method::PATCH, one(&id), Some(body), View::Endpoint)
        }
        W::Test { id, kind, client } => {
            let body = kind.map_or(json!({}), |k| json!({"type": k}));
            let path = format!("/v1/webhooks/{id}/test");
            (client, Method::POST, path, Some(body), View::Attempt)
        }
        W::Deliveries {
            id,
            status,
            after,
            limit,
            client,
        } => {
            let status = status.map(|s| format!("&status={s}")).unwrap_or_default();
            let path = format!("/v1/webhooks/{id}/deliveries?after={after}&limit={limit}{status}");
            (client, Method::GET, path, None, View::Deliveries(limit))
        }
        W::Replay { id, since, client } => {
            let path = format!("/v1/webhooks/{id}/replay");
            let done = View::Line(format!("replaying {id} from seq {since}"));
            (
                client,
                Method::POST,
                path,
                Some(json!({"since": since})),
                done,
            )
        }
        W::Recover {
            id,
            all: _,
            since,
            client,
        } => {
            let path = match &id {
                Some(id) => format!("/v1/webhooks/{id}/recover"),
                None => "/v1/webhooks/recover".into(),
            };
            let body = Some(json!({"since": since}));
            (client, Method::POST, path, body, View::Recovered)
        }
        W::Rotate { id, client } => {
            let path = format!("/v1/webhooks/{id}/rotate-secret");
            (client, Method::POST, path, None, View::Endpoint)
        }
    }
}

fn apply(body: &mut Value, s: EndpointSettings) {
    if !s.types.is_empty() {
        body["types"] = s.types.into();
    }
    if let Some(o) = s.ordered {
        body["ordered"] = o.into();
    }
    if let Some(d) = s.description {
        body["description"] = d.into();
    }
    if let Some(r) = s.rate_limit {
        body["rate_limit"] = r.into();
    }
}

fn render(view: &View, reply: &Value, color: bool) -> String {
    match view {
        View::Endpoint => endpoint(reply, color),
        View::Endpoints => {
            let rows: Vec<Vec<String>> = list(&reply["webhooks"])
                .map(|e| {
                    vec![
                        text(&e["id"]),
                        state(e, color),
                        text(&e["url"]),
                        joined(&e["channels"]),
                        text(&e["owner"]),
                        text(&e["description"]),
                    ]
                })
                .collect();
            let head = ["ID", "STATE", "URL", "CHANNELS", "OWNER", "DESCRIPTION"];
            table(&head, &rows)
        }
        View::Deliveries(limit) => {
            let rows: Vec<Vec<String>> = list(&reply["deliveries"])
                .map(|a| {
                    vec![
                        text(&a["id"]),
                        text(&a["seq"]),
                        text(&a["attempt"]),
                        paint(&text(&a["status"]), color),
                        text(&a["status_code"]),
                        text(&a["duration_ms"]),
                        text(&a["time"]),
                        text(&a["error"]),
                    ]
                })
                .collect();
            let head = [
                "ID", "SEQ", "ATTEMPT", "STATUS", "CODE", "MS", "TIME", "ERROR",
            ];
            let mut out = table(&head, &rows);
            // A full page may have more behind it.
            if rows.len() >= *limit as usize {
                out.push_str(&format!("more: --after {}\n", text(&reply["next"])));
            }
            out
        }
        View::Attempt => {
            let outcome = match reply["status_code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => text(&reply["error"]),
            };
            let body = text(&reply["response_body"]);
            format!(
                "{} ({outcome}) in {} ms{}\n",
                paint(&text(&reply["status"]), color),
                text(&reply["duration_ms"]),
                if body.is_empty() {
                    String::new()
                } else {
                    format!("\n{body}")
                }
            )
        }
        View::Recovered => format!("recovering {} events\n", reply["recovering"]),
        View::Line(line) => format!("{line}\n"),
    }
}

/// An endpoint as `key: value` lines; the secret only when the server sent it.
fn endpoint(e: &Value, color: bool) -> String {
    let mut rows = vec![
        ("id", text(&e["id"])),
        ("state", state(e, color)),
        ("url", text(&e["url"])),
        ("channels", joined(&e["channels"])),
        ("types", joined(&e["types"])),
        ("owner", text(&e["owner"])),
        ("description", text(&e["description"])),
        ("ordered", text(&e["ordered"])),
        ("rate limit", text(&e["rate_limit"])),
        ("pending", text(&e["pending"])),
        ("created", text(&e["created"])),
        ("secret", text(&e["secret"])),
    ];
    rows.retain(|(_, v)| !v.is_empty());
    rows.iter().map(|(k, v)| format!("{k:<12} {v}\n")).collect()
}

fn state(e: &Value, color: bool) -> String {
    match (e["enabled"].as_bool(), e["disabled_reason"].as_str()) {
        (Some(true), _) => paint("enabled", color),
        (_, Some(reason)) => format!("{} ({reason})", paint("disabled", color)),
        _ => paint("disabled", color),
    }
}

/// Green for good, yellow for waiting, red for bad, on a terminal only.
fn paint(word: &str, color: bool) -> String {
    let code = match word {
        "delivered" | "enabled" => "32",
        "retrying" => "33",
        "failed" | "disabled" => "31",
        _ => return word.to_string(),
    };
    if color {
        format!("\x1b[{code}m{word}\x1b[0m")
    } else {
        word.to_string()
    }
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn joined(v: &Value) -> String {
    list(v).map(text).collect::<Vec<_>>().join(",")
}

/// Columns padded to their widest cell (ANSI color codes do not count).
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let visible = |s: &str| {
        let mut n = 0;
        let mut in_escape = false;
        for c in s.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (false, _) => n += 1,
                _ => {}
            }
        }
        n
    };
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| visible(&r[i]))
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - visible(cell) + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}
