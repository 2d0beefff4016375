//! A member's TLS configuration, re-read from disk while it runs so rotated certificates,
//! keys and CAs apply to new connections without a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::{ClientConfig, ServerConfig};

use crate::files::{self, Configs, Contents, TlsError, TlsFiles};

/// How often the files are re-read. Polling (not inotify) because Kubernetes and
/// cert-manager rotate mounted secrets by swapping a symlinked directory, which file
/// watches on the old inode miss; three small files every two seconds cost nothing.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

struct Current {
    contents: Contents,
    configs: Configs,
}

struct Inner {
    files: TlsFiles,
    current: RwLock<Current>,
    watching: AtomicBool,
}

/// The TLS files of one member and the configurations last built from them (cheap to clone).
#[derive(Clone)]
pub struct TlsSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("files", &self.inner.files)
            .finish()
    }
}

impl TlsSource {
    /// Reads and checks the files; fails with an error naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<TlsSource, TlsError> {
        let contents = files::read(&files)?;
        let configs = files::build(&files, &contents)?;
        Ok(TlsSource {
            inner: Arc::new(Inner {
                files,
                current: RwLock::new(Current { contents, configs }),
                watching: AtomicBool::new(false),
            }),
        })
    }

    /// The files this source reads.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// The server configuration new inbound connections use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.current.read().configs.server.clone()
    }

    /// The client configuration new outbound connections use.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.inner.current.read().configs.client.clone()
    }

    /// Re-reads the files; true when they changed and the new ones are now in use. Invalid
    /// new files (a half-written rotation, a key that does not match yet) leave the previous
    /// configuration in place and return the error.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = files::read(&self.inner.files)?;
        if self.inner.current.read().contents == contents {
            return Ok(false);
        }
        let configs = files::build(&self.inner.files, &contents)?;
        *self.inner.current.write() = Current { contents, configs };
        Ok(true)
    }

    /// Starts re-reading the files every [`RELOAD_EVERY`] on the current tokio runtime (once
    /// per source however often it is called); the task ends when the source is dropped.
    pub fn watch(&self) {
        if self.inner.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            // The last error is remembered so a file that stays broken is logged once.
            let mut last_error = String::new();
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                let source = TlsSource { inner };
                match source.reload() {
                    Ok(true) => {
                        last_error.clear();
                        tracing::info!(cert = %source.files().cert.display(), "TLS files changed; new connections use them");
                    }
                    Ok(false) => last_error.clear(),
                    Err(e) => {
                        let text = e.to_string();
                        if text != last_error {
                            tracing::warn!(error = %text, "TLS files not reloaded; the previous ones stay in use");
                            last_error = text;
                        }
                    }
                }
            }
        });
    }
}
