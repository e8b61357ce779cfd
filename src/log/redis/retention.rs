//! Retention on Redis: a timer on every node runs the trim script (harmless when several do)
//! and sweeps the per-channel indexes down to the retained range.

use super::*;

/// Most events one retention pass deletes per script call.
pub(super) const TRIM_CHUNK: u64 = 10_000;

/// Applies retention on a timer. Every node runs it; the script makes that harmless.
pub(super) async fn trimmer(parts: Parts, config: LogConfig) {
    let mut tick = tokio::time::interval(config.trim_interval.max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = parts.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = trim_once(&parts, &config).await {
            tracing::debug!(error = %e, "retention trim failed (will retry)");
        }
    }
}

pub(super) async fn trim_once(parts: &Parts, config: &LogConfig) -> Result<(), redis::RedisError> {
    let mut conn = parts.conn.clone();
    let cutoff = now_ms().saturating_sub(config.retention.as_millis() as u64);
    let mut moved = 0;
    loop {
        let n: u64 = parts
            .scripts
            .trim
            .key(&parts.keys.seq)
            .key(&parts.keys.log)
            .key(&parts.keys.oldest)
            .arg(config.max_events.max(1))
            .arg(cutoff)
            .arg(TRIM_CHUNK)
            .invoke_async(&mut conn)
            .await?;
        moved += n;
        if n < TRIM_CHUNK {
            break;
        }
    }
    let oldest: Option<u64> = redis::cmd("GET")
        .arg(&parts.keys.oldest)
        .query_async(&mut conn)
        .await?;
    let oldest = oldest.unwrap_or(1);
    parts.oldest.store(oldest, Ordering::Release);
    if moved > 0 {
        sweep_channels(parts, &mut conn, oldest).await?;
    }
    Ok(())
}

/// Trims every channel index to the retained range.
pub(super) async fn sweep_channels(
    parts: &Parts,
    conn: &mut ConnectionManager,
    oldest: u64,
) -> Result<(), redis::RedisError> {
    let minid = format!("{oldest}-0");
    let mut cursor = 0u64;
    loop {
        let (next, names): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(&parts.keys.channels)
            .arg(cursor)
            .arg("COUNT")
            .arg(200)
            .query_async(conn)
            .await?;
        for name in names {
            let _: i64 = parts
                .scripts
                .sweep
                .key(format!("{}:ch:{name}", parts.keys.prefix))
                .key(&parts.keys.channels)
                .arg(&name)
                .arg(&minid)
                .invoke_async(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
