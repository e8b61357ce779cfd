//! The storage layer beneath `log` and `webhook`: one error type for both engines (so a
//! failure keeps its cause and says which store it was), and the key encodings that what is
//! kept in the embedded store (fjall) shares.

pub mod keys;
pub mod lock;

use std::sync::Arc;

/// A storage failure, with its cause kept as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the embedded store failed: {0}")]
    Fjall(#[source] fjall::Error),
    #[error("the embedded store failed: {0}")]
    Lsm(#[source] fjall::LsmError),
    /// Redis could not be reached or refused the command: nothing was written, retry. Shared
    /// (`Arc`) because one failed round trip answers every request folded into it.
    #[error("redis: {0}")]
    Redis(#[source] Arc<redis::RedisError>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Stored bytes or a reply that do not have the shape we write.
    #[error("corrupt {0}")]
    Corrupt(String),
    /// A compare-and-set lost to concurrent writers more often than it retries.
    #[error("{0}")]
    Contended(String),
    /// The webhook attempt writer has stopped (the server is shutting down).
    #[error("the webhook attempt writer has stopped")]
    Closed,
    /// Blocking store work could not run (the runtime is shutting down).
    #[error("store task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// Worth retrying soon: the shared store was unreachable or busy, nothing was written.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Redis(_) | StoreError::Contended(_))
    }

    pub fn json(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
        move |source| StoreError::Json { what, source }
    }
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Fjall(e)
    }
}

impl From<fjall::LsmError> for StoreError {
    fn from(e: fjall::LsmError) -> Self {
        StoreError::Lsm(e)
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Redis(Arc::new(e))
    }
}
