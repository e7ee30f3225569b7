//! The two stores, each answering within the store timeout or counting as unreachable for that
//! request: a few Postgres connections used round-robin (reconnected when closed), and one
//! multiplexed Redis connection manager (created on first use, reconnecting by itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

/// Why a store did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("redis: {0}")]
    Redis(String),
    /// The batch tables do not exist yet: the batch layer never ran against this database.
    #[error("postgres: the batch layer's tables do not exist yet")]
    NoBatchSchema,
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        // a connection or TLS failure: its causes say what was wrong (a certificate…)
        None => lambdalake_runtime::with_causes(e),
    }
}

pub struct Postgres {
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` says (see `lambdalake_runtime::tls`).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    slots: Vec<Mutex<Option<Arc<tokio_postgres::Client>>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Postgres {
    pub fn new(url: &str, connections: usize, timeout: Duration) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
        config.connect_timeout(timeout);
        Ok(Postgres {
            config,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(
                lambdalake_runtime::tls::client_config(),
            ),
            slots: (0..connections).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connected client (a closed one is replaced).
    pub async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let connect = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| StoreError::Postgres("connection timed out".to_owned()))?
            .map_err(|e| StoreError::Postgres(pg_message(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Run `f` on a client within the timeout.
    pub async fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<tokio_postgres::Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let c = self.client().await?;
            f(c).await.map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                    StoreError::NoBatchSchema
                } else {
                    StoreError::Postgres(pg_message(&e))
                }
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError::Postgres("query timed out".to_owned()))?
    }
}

pub struct Redis {
    client: redis::Client,
    manager: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
}

impl Redis {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Redis {
            client: redis::Client::open(url).map_err(|e| e.to_string())?,
            manager: Mutex::new(None),
            timeout,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut m = self.manager.lock().await;
        if let Some(c) = m.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::Redis("connection timed out".to_owned()))?
        .map_err(|e| StoreError::Redis(e.to_string()))?;
        *m = Some(c.clone());
        Ok(c)
    }

    /// Run a pipeline within the timeout.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let work = async {
            let mut c = self.connection().await?;
            pipe.query_async::<T>(&mut c)
                .await
                .map_err(|e| StoreError::Redis(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError::Redis("timed out".to_owned()))?
    }
}
