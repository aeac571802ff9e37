//! Reaching the database: URLs (recognised, redacted for messages, mapped to the directory of
//! the files kept beside the store), single connections, and the pool reads run on.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Client, NoTls};

use super::Postgres;
use crate::store::{Result, StoreError};

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        let detail = match e.as_db_error() {
            Some(db) => format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            ),
            None => e.to_string(),
        };
        StoreError::Database(detail)
    }
}

/// Whether `url` names a PostgreSQL database rather than an SQLite file.
pub(in crate::store) fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Where the files kept beside the store go for the database named by `url`.
pub(in crate::store) fn url_location(url: &str) -> Result<PathBuf> {
    let config: tokio_postgres::Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Open {
                path: redact(url),
                reason: e.to_string(),
            })?;
    location_for(&config).map_err(|reason| StoreError::Open {
        path: redact(url),
        reason,
    })
}

/// Longest wait for one read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool of connections reads run on.
pub(super) fn pool(config: &tokio_postgres::Config) -> std::result::Result<Pool, String> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(8)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(READ_TIMEOUT))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| e.to_string())
}

impl Postgres {
    /// Runs `f` on a pooled connection, bounded in time so an unreachable database makes
    /// reads fail rather than hang.
    pub(super) async fn read<R, F, Fut>(&self, f: F) -> Result<R>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        let work = async {
            let conn = self.inner.pool.get().await.map_err(|e| {
                StoreError::Database(format!("the PostgreSQL store is unreachable: {e}"))
            })?;
            f(conn).await
        };
        tokio::time::timeout(READ_TIMEOUT, work)
            .await
            .map_err(|_| {
                StoreError::Database(format!(
                    "the PostgreSQL store did not answer within {} s",
                    READ_TIMEOUT.as_secs()
                ))
            })?
    }
}

/// The URL without its password, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Where files that SQLite keeps beside its database go for this PostgreSQL database: a
/// private directory per server and database under the platform data dir.
pub(super) fn location_for(
    config: &tokio_postgres::Config,
) -> std::result::Result<PathBuf, String> {
    let base = directories::ProjectDirs::from("", "", "baton")
        .map(|d| d.data_dir().to_owned())
        .ok_or("cannot find a home directory for the files kept beside the store")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    let name: String = format!("{host}_{port}_{db}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = base.join("postgres").join(name.trim_matches('_'));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(dir.join("baton.pg"))
}

/// A new connection whose driving task runs on the runtime.
pub(super) async fn connect(
    config: &tokio_postgres::Config,
) -> std::result::Result<Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_shown_in_messages_never_carries_the_password() {
        assert_eq!(
            redact("postgres://baton:s3cret@db.internal/baton"),
            "postgres://baton:***@db.internal/baton"
        );
        assert_eq!(
            redact("postgresql://baton@localhost/b?host=/tmp/s"),
            "postgresql://baton@localhost/b?host=/tmp/s"
        );
    }

    #[test]
    fn postgres_urls_select_postgres_and_paths_do_not() {
        assert!(is_url("postgres://u@h/db"));
        assert!(is_url("postgresql:///db?host=/run/postgresql"));
        assert!(!is_url("/var/lib/baton/baton.db"));
        assert!(!is_url("postgres.db"));
    }
}
