//! Starting and stopping the daemon, in phases: (config is validated by the caller) → open the
//! state directory and the store → load or create the API token → bind every socket → spawn the
//! services. [`Daemon::shutdown`] cancels one token tree and waits, bounded, for every task.
//! Tests run exactly this code in-process on port 0.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Shared};
use crate::config::Config;
use crate::secrets::{self, SecretError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot open the registry in {path}: {source} (is another lacave running on this state directory?)"
    )]
    Store { path: PathBuf, source: StoreError },
    #[error("API token: {0}")]
    Token(#[from] SecretError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// Problems the operator fixes in the configuration or its files exit like a bad config.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StartError::Token(SecretError::TooOpen { .. } | SecretError::Malformed { .. })
        )
    }
}

/// A running daemon.
pub struct Daemon {
    http_addr: SocketAddr,
    token_path: PathBuf,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

fn create_state_dir(config: &Config) -> Result<(), StartError> {
    let path = &config.state_dir;
    let err = |source| StartError::StateDir {
        path: path.clone(),
        source,
    };
    if !path.exists() {
        fs::create_dir_all(path).map_err(err)?;
        // Only the daemon's user reads its state: it holds the token and, later, keys.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Opens the store, binds every socket and spawns the services.
pub async fn start(config: Config) -> Result<Daemon, StartError> {
    create_state_dir(&config)?;
    let registry = config.registry_dir();
    let store = tokio::task::spawn_blocking({
        let registry = registry.clone();
        move || Store::open(&registry)
    })
    .await
    .expect("opening the store does not panic")
    .map_err(|source| StartError::Store {
        path: registry,
        source,
    })?;
    let token_path = config.token_path();
    let generate = config.api.token_file.is_none();
    let (token, created) = secrets::load_or_create_token(&token_path, generate)?;
    if created {
        tracing::info!(path = %token_path.display(), "generated a new API token");
    }

    let listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "http",
            addr: config.http.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "http",
        addr: config.http.listen,
        source,
    })?;
    tracing::info!(addr = %http_addr, "http listening (API, node endpoints, /healthz, /metrics)");

    let shared = Arc::new(Shared::new(config, store, token));
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();

    let app = api::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let http_cancel = cancel.child_token();
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(http_cancel.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "http server stopped");
        }
    });

    Ok(Daemon {
        http_addr,
        token_path,
        shared,
        cancel,
        tasks,
    })
}

impl Daemon {
    /// The bound HTTP address (the real port when the config asked for port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn api_token(&self) -> &str {
        self.shared.token.as_str()
    }

    pub fn token_path(&self) -> &std::path::Path {
        &self.token_path
    }

    /// Waits for `signal`, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown(Duration::from_secs(10)).await;
    }

    /// Stops every service, waiting at most `grace` for in-flight requests, then makes sure the
    /// store is flushed and closed (so another `start` on the same state directory works).
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!("shutting down");
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "some tasks did not stop in time"
            );
        }
        let shared = self.shared;
        let flushed = tokio::task::spawn_blocking(move || {
            // The last handle to the store goes here; sled releases its lock on drop.
            let result = shared.store.flush();
            drop(shared);
            result
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!("stopped"),
            Ok(Err(error)) => tracing::error!(%error, "final flush of the registry failed"),
            Err(error) => tracing::error!(%error, "final flush of the registry panicked"),
        }
    }
}

/// SIGTERM and SIGINT handlers. Installed before the daemon reports ready, so that a stop
/// request arriving right after start-up is a graceful shutdown, not the default kill.
pub struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    pub fn install() -> std::io::Result<TerminationSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(TerminationSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("received SIGTERM"),
            _ = self.int.recv() => tracing::info!("received SIGINT"),
        }
    }
}
