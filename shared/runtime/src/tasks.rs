//! Named tasks under one cancellation token: a task that fails cancels the others, and the
//! first failure becomes the process's exit status.

use std::future::Future;
use std::sync::{Arc, Mutex};

pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Stack of the threads [`Tasks::spawn_thread`] starts: 64 MiB.
pub const THREAD_STACK_BYTES: usize = 64 << 20;

/// Supervises a service's tasks.
#[derive(Clone, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    failure: Arc<Mutex<Option<(&'static str, String)>>>,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when shutdown starts (a signal, a failed task, or [`Tasks::shutdown`]).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawn a named task. If it returns an error, every task is cancelled.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        let token = self.token.clone();
        let failure = self.failure.clone();
        self.tracker.spawn(async move {
            tracing::debug!(task = name, "task started");
            match task.await {
                Ok(()) => tracing::debug!(task = name, "task finished"),
                Err(error) => {
                    tracing::error!(task = name, %error, "task failed; shutting down");
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert((name, error.to_string()));
                    }
                    token.cancel();
                }
            }
        });
    }

    /// Run blocking work (a consumer loop) on a thread of its own (a [`THREAD_STACK_BYTES`] stack), supervised as the task `name`:
    /// when it ends — done, failed or panicked — everything shuts down, and its error becomes the
    /// task's failure.
    pub fn spawn_thread<E, F>(&self, name: &'static str, work: F) -> Result<(), String>
    where
        E: std::fmt::Display + Send + 'static,
        F: FnOnce() -> Result<(), E> + Send + 'static,
    {
        let token = self.token.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            // query planners (DataFusion) recurse over expression trees: room for deep ones
            // (only the pages touched are committed)
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || {
                let _ = done_tx.send(work().map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        self.spawn(name, async move {
            let result = match done_rx.await {
                Ok(r) => r,
                Err(_) => Err(format!("the {name} thread panicked")),
            };
            token.cancel();
            result.map_err(Into::into)
        });
        Ok(())
    }

    /// Run an HTTP server as the task `http`: stopped gracefully (in-flight requests answered)
    /// when shutdown starts; if it ends by itself, everything shuts down.
    pub fn spawn_http(&self, server: actix_web::dev::Server) {
        let token = self.token.clone();
        let handle = server.handle();
        self.spawn("http", async move {
            let result = tokio::select! {
                r = server => r,
                () = token.cancelled() => Ok(()),
            };
            token.cancel();
            handle.stop(true).await;
            result.map_err(Into::into)
        });
    }

    /// Start shutting down.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Cancel on SIGINT or SIGTERM.
    pub fn cancel_on_signals(&self) {
        let token = self.token.clone();
        self.spawn("signals", async move {
            tokio::select! {
                () = shutdown_signal() => {
                    tracing::info!("shutdown signal received");
                    token.cancel();
                }
                () = token.cancelled() => {}
            }
            Ok(())
        });
    }

    /// Wait until every task has finished; returns the first failure, if any.
    pub async fn wait(&self) -> Result<(), (&'static str, String)> {
        self.tracker.close();
        self.tracker.wait().await;
        match self.failure.lock().ok().and_then(|mut f| f.take()) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_cancels_the_others() {
        let tasks = Tasks::new();
        let token = tasks.token();
        tasks.spawn("waiter", async move {
            token.cancelled().await;
            Ok(())
        });
        tasks.spawn("failer", async { Err("boom".into()) });
        assert_eq!(tasks.wait().await, Err(("failer", "boom".to_owned())));
    }

    #[tokio::test]
    async fn clean_shutdown_is_ok() {
        let tasks = Tasks::new();
        let token = tasks.token();
        tasks.spawn("waiter", async move {
            token.cancelled().await;
            Ok(())
        });
        tasks.shutdown();
        assert_eq!(tasks.wait().await, Ok(()));
    }
}
