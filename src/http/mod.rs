//! The HTTP front-end: a REST API over the engine with the MCP tools' shapes, server-sent
//! event streams, a dashboard, `/healthz` and `/metrics` (DESIGN.md §12).
//!
//! Invariant: like every front-end it holds no state the store does not have — each handler
//! calls the engine and words the answer; every `/api/` call is authenticated by the token
//! kept beside the database, and mutating calls refuse cross-site origins. A slow event
//! stream client can never grow the server's memory: its queue is bounded and a client that
//! stops reading is disconnected (it reconnects with its cursor and misses nothing).
//!
//! # Layout
//! - `mod.rs`: configuration, binding, the accept loop and the router.
//! - `auth`: the token file, bearer/cookie/`?token=` checks, the Origin check.
//! - `api`: REST handlers and the one mapping of engine errors to status codes.
//! - `sse`: the event streams of one workflow and of all workflows.
//! - `metrics`: `/metrics` (Prometheus text) and `/healthz`.
//! - `dashboard`: the page and its static assets.

mod api;
mod auth;
mod dashboard;
mod metrics;
mod sse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Links;
use crate::engine::Engine;

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Binding a non-loopback address was asked for explicitly.
    pub allow_remote: bool,
    /// `/metrics` without the token.
    pub metrics_public: bool,
    /// Longest silence on an event stream before a `: keepalive` comment.
    pub keepalive: Duration,
    /// How long an event stream client may leave its queue full before it is disconnected.
    pub send_timeout: Duration,
    /// Frames queued per event stream client.
    pub queue: usize,
}

impl HttpConfig {
    pub fn new(addr: SocketAddr) -> HttpConfig {
        HttpConfig {
            addr,
            allow_remote: false,
            metrics_public: false,
            keepalive: Duration::from_secs(15),
            send_timeout: Duration::from_secs(10),
            queue: 256,
        }
    }
}

/// Errors of the HTTP front-end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error(
        "refusing to serve HTTP on {0}, which is not a loopback address: anyone who can reach it could try the token; pass --http-allow-remote to do it anyway"
    )]
    Remote(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = HttpError> = std::result::Result<T, E>;

/// Counters of the event streams, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    pub clients: AtomicU64,
    pub dropped: AtomicU64,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub token: Arc<str>,
    pub cfg: Arc<HttpConfig>,
    pub links: Links,
    pub streams: Arc<StreamStats>,
    pub shutdown: CancellationToken,
}

/// A bound server, not yet accepting.
pub struct Bound {
    listener: TcpListener,
    state: AppState,
    url_file: PathBuf,
}

/// Binds the listener, creates or reads the token, and writes `baton.http` beside the
/// database. Port 0 picks a free port.
pub async fn bind(engine: Engine, cfg: HttpConfig, shutdown: CancellationToken) -> Result<Bound> {
    if !cfg.addr.ip().is_loopback() && !cfg.allow_remote {
        return Err(HttpError::Remote(cfg.addr));
    }
    let dir = beside(engine.store().location());
    let token = auth::load_or_create_token(&dir.join("baton.token"))?;
    let listener = TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: cfg.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: cfg.addr,
        source,
    })?;
    let links = Links {
        base: format!("http://{local}"),
        token: token.clone(),
    };
    let url_file = dir.join("baton.http");
    auth::write_private(&url_file, &format!("{}/\n", links.base))?;
    Ok(Bound {
        listener,
        state: AppState {
            engine,
            token: token.into(),
            cfg: Arc::new(cfg),
            links,
            streams: Arc::default(),
            shutdown,
        },
        url_file,
    })
}

/// The directory of the files kept beside the database.
fn beside(db: &Path) -> PathBuf {
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

impl Bound {
    /// Links for other front-ends (the MCP tools' `dashboard_url`, `events_url`).
    pub fn links(&self) -> Links {
        self.state.links.clone()
    }

    /// The path of the token file.
    pub fn token_file(&self) -> PathBuf {
        self.url_file.with_file_name("baton.token")
    }

    /// Serves until the shutdown token given to [`bind`] fires; then stops accepting, ends
    /// every connection (event streams included) and removes `baton.http` if it still names
    /// this server.
    pub async fn serve(self) {
        let Bound {
            listener,
            state,
            url_file,
        } = self;
        let shutdown = state.shutdown.clone();
        let router = router(state.clone());
        let conns = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            let (sock, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            conns.spawn(connection(sock, router.clone(), shutdown.clone()));
        }
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
        if std::fs::read_to_string(&url_file)
            .is_ok_and(|s| s.trim_end() == format!("{}/", state.links.base))
        {
            let _ = std::fs::remove_file(&url_file);
        }
    }
}

/// Ends one connection from inside a handler: how an event stream drops a client that
/// stopped reading (hyper would otherwise keep the connection and its buffers).
#[derive(Clone)]
pub(crate) struct Disconnect(pub CancellationToken);

async fn connection(sock: tokio::net::TcpStream, router: Router, shutdown: CancellationToken) {
    let kill = CancellationToken::new();
    let kill_in = kill.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Disconnect(kill_in.clone()));
            let mut router = router.clone();
            tower_service::Service::call(&mut router, req)
        });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = kill.cancelled() => tracing::debug!("HTTP connection dropped by the server"),
        () = shutdown.cancelled() => {}
    }
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/workflows", get(api::list).post(api::start))
        .route("/workflows/bulk", post(api::bulk))
        .route("/workflows/{id}", get(api::status).delete(api::delete))
        .route("/workflows/{id}/resume", post(api::resume))
        .route("/workflows/{id}/cancel", post(api::cancel))
        .route("/workflows/{id}/approve", post(api::approve))
        .route("/workflows/{id}/steps/{step}/output", get(api::output))
        .route("/workflows/{id}/steps/{step}/tail", get(sse::step_tail))
        .route("/workflows/{id}/events", get(sse::workflow_events))
        .route("/events", get(sse::all_events))
        .route("/schema/events", get(api::event_schema))
        .fallback(api::not_found)
        // A definition may be as large as the engine accepts (plus its JSON envelope).
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::engine::MAX_DEFINITION_BYTES as usize + 64 * 1024,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(metrics::healthz))
        .route("/metrics", get(metrics::metrics))
        .merge(dashboard::routes())
        .layer(axum::middleware::from_fn(dashboard::security_headers))
        .with_state(state)
}
