//! Connecting to Redis: timeouts that turn an outage into fast errors, TLS with a private CA,
//! a durability check, and URLs and errors that never show the password.

use super::*;

/// A Redis error as a log error: every failure to talk to Redis means "not written, retry".
pub fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.into())
}

/// The URL as it may be logged: userinfo (`user:password@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("***");
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        // Unparseable: show only the scheme, the rest may hold anything.
        Err(_) => format!("{}://(unparseable)", url.split("://").next().unwrap_or("?")),
    }
}

/// Removes the URL's password from an error message that may quote it.
pub(super) fn scrub(message: String, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(pw) if !pw.is_empty() => message.replace(&pw, "***"),
        _ => message,
    }
}

/// Connects to Redis with timeouts that turn an outage into fast errors (publishers get a
/// 503 within a second) while the manager reconnects in the background. Errors never quote
/// the URL's password.
pub async fn connect(
    url: &str,
    tls_ca: Option<&std::path::Path>,
) -> Result<(Client, ConnectionManager), LogError> {
    connect_inner(url, tls_ca).await.map_err(|e| {
        // Redis's own errors do not quote the URL, but should one ever do, it is replaced by
        // its scrubbed text rather than logged with the password.
        let text = e.to_string();
        let scrubbed = scrub(text.clone(), url);
        if scrubbed == text {
            e
        } else {
            LogError::Storage(StoreError::Corrupt(scrubbed))
        }
    })
}

pub(super) async fn connect_inner(
    url: &str,
    tls_ca: Option<&std::path::Path>,
) -> Result<(Client, ConnectionManager), LogError> {
    let client = match tls_ca {
        None => Client::open(url),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| {
                LogError::Storage(StoreError::Io {
                    what: format!("redis.tls_ca {}", path.display()),
                    source,
                })
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(url, certs)
        }
    }
    .map_err(|e| {
        LogError::Storage(StoreError::Corrupt(format!(
            "redis url {}: {}",
            redact_url(url),
            scrub(e.to_string(), url)
        )))
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(unavailable)?;
    Ok((client, conn))
}

/// Our `fsync` policy needs Redis to fsync every write; say so when it does not (the check
/// is advisory: managed Redis services often refuse CONFIG).
/// Refuses a Redis older than 7.0, whose Lua runtime lacks what the log and presence scripts
/// use: better a clear error at start than a script error on the first publish. A server
/// that will not say its version (INFO refused by an ACL) is given the benefit of the doubt.
pub(super) async fn check_version(conn: &mut ConnectionManager) -> Result<(), LogError> {
    let Ok(info) = redis::cmd("INFO")
        .arg("server")
        .query_async::<String>(conn)
        .await
    else {
        return Ok(());
    };
    let Some(version) = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
    else {
        return Ok(());
    };
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_some_and(|m| m < 7) {
        return Err(LogError::RedisTooOld(version.to_string()));
    }
    Ok(())
}

pub(super) async fn warn_about_durability(conn: &mut ConnectionManager, config: &LogConfig) {
    let got: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let Ok(pairs) = got else { return };
    let get = |name: &str| {
        pairs
            .chunks(2)
            .find(|kv| kv[0] == name)
            .map(|kv| kv[1].clone())
    };
    let aof = get("appendonly").unwrap_or_default();
    let fsync = get("appendfsync").unwrap_or_default();
    if aof != "yes" {
        tracing::warn!("redis runs without appendonly: a Redis restart loses acknowledged events");
    } else if config.durability == crate::config::Durability::Fsync && fsync != "always" {
        tracing::warn!(
            appendfsync = %fsync,
            "log.durability is fsync but redis has appendfsync {fsync}: a machine crash may \
             lose up to a second of acknowledged events"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(
            redact_url("rediss://app:hunter2@cache.internal"),
            "rediss://***@cache.internal"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert!(!redact_url("redis://:hunter2@[bad").contains("hunter2"));
        assert_eq!(
            scrub("auth failed for hunter2".into(), "redis://:hunter2@h"),
            "auth failed for ***"
        );
    }
}
