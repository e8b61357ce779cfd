//! The listener's TLS: rustls with ALPN `h2` and `http/1.1`, its certificate read from PEM
//! files and replaced without a restart (on SIGHUP, and when the files' modification time
//! changes, checked every few seconds). A reload that fails keeps the certificate in use and
//! says why in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files' modification times are looked at.
const WATCH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert and server.tls_key go together: give both or neither")]
    Half,
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("tls certificate").clone())
    }
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_error(key, e))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn modified(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The acceptor for `server.tls_cert`/`tls_key`, or None without them; starts the reloader.
pub fn acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
    stop: CancellationToken,
) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => return Err(TlsError::Half),
    };
    let resolver = Arc::new(Reloading {
        current: RwLock::new(load(&cert, &key)?),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| file_error(&cert, e))?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload(resolver, cert, key, stop));
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

async fn reload(resolver: Arc<Reloading>, cert: PathBuf, key: PathBuf, stop: CancellationToken) {
    let paths = [cert.clone(), key.clone()];
    let mut seen = modified(&paths);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(WATCH);
    loop {
        let asked = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
        };
        let now = modified(&paths);
        if !asked && now == seen {
            continue;
        }
        seen = now;
        match load(&cert, &key) {
            Ok(fresh) => {
                *resolver.current.write().expect("tls certificate") = fresh;
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays")
            }
        }
    }
}
