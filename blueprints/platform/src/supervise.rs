//! Background tasks a process cannot live without (the outbox relay, consumers, the
//! gateway's cache invalidation, `/metrics`). Each runs until the process stops; one that
//! ends before that (it returned, or panicked: an `unwrap` in a handler of yours) means
//! the process no longer does its job while its health still says it does. The
//! supervisor notices, logs why, and makes the process stop: it reports not ready, drains
//! and exits non-zero, so an orchestrator restarts it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Why a supervised task ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("background task `{task}` {how} before the process was asked to stop")]
pub struct TaskFailed {
    pub task: &'static str,
    /// `ended` or `panicked: <message>`.
    pub how: String,
}

pub struct Supervisor {
    /// One watcher per task, which reports it if it ends early.
    tasks: JoinSet<()>,
    /// The tasks themselves, to cut off one that ignores the stop.
    running: Vec<tokio::task::AbortHandle>,
    stop: watch::Sender<bool>,
    failed: Arc<Mutex<Option<TaskFailed>>>,
    failure: Arc<Notify>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            running: Vec::new(),
            stop: watch::channel(false).0,
            failed: Arc::new(Mutex::new(None)),
            failure: Arc::new(Notify::new()),
        }
    }

    /// What tasks watch to learn that the process is stopping: `true` from then on.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Runs `task` under `name`; if it ends while the process is not stopping, the first
    /// such failure is kept and [`Supervisor::failed`] resolves.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let inner = tokio::spawn(task);
        self.running.push(inner.abort_handle());
        let stopping = self.stop.subscribe();
        let (failed, failure) = (self.failed.clone(), self.failure.clone());
        self.tasks.spawn(async move {
            let how = match inner.await {
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                Err(e) => format!("was cancelled: {e}"),
            };
            if *stopping.borrow() {
                return;
            }
            record(&failed, &failure, TaskFailed { task: name, how });
        });
    }

    /// Runs the task `built` holds, or, when it could not be built (a consumer the broker
    /// settings do not allow, say), fails as a task that ended at once: the process stops
    /// rather than serving without it.
    pub fn spawn_or_fail<E: std::fmt::Display>(
        &mut self,
        name: &'static str,
        built: Result<impl Future<Output = ()> + Send + 'static, E>,
    ) {
        match built {
            Ok(task) => self.spawn(name, task),
            Err(e) => record(
                &self.failed,
                &self.failure,
                TaskFailed {
                    task: name,
                    how: format!("could not start ({e})"),
                },
            ),
        }
    }

    /// Resolves when a task has ended early (never, while they all run).
    pub fn failed(&self) -> impl Future<Output = ()> + Send + 'static {
        let failure = self.failure.clone();
        let failed = self.failed.clone();
        async move {
            loop {
                let notified = failure.notified();
                if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Resolves when `shutdown` does or a task has ended early, whichever comes first: the
    /// moment the process starts to stop.
    pub fn stop_requested(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let failed = self.failed();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = failed => {}
            }
        }
    }

    /// Tells the tasks to stop, gives them `timeout`, and says whether one had failed.
    pub async fn stop(mut self, timeout: Duration) -> Result<(), TaskFailed> {
        let _ = self.stop.send(true);
        if tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("background tasks did not stop within {timeout:?}; cutting them off");
            self.tasks.abort_all();
            for task in &self.running {
                task.abort();
            }
        }
        match self.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// Logs `failure`, keeps it if it is the first, and wakes whoever waits in `failed()`.
fn record(failed: &Mutex<Option<TaskFailed>>, failure: &Notify, failure_now: TaskFailed) {
    tracing::error!(task = failure_now.task, reason = %failure_now, "a background task the process needs is not running; stopping the process");
    let mut slot = failed.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(failure_now);
    }
    failure.notify_one();
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until the process stops, as the relay does.
    fn well_behaved(supervisor: &Supervisor) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = supervisor.stopping();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_stops_the_process_with_the_reason() {
        let mut supervisor = Supervisor::new();
        let relay = well_behaved(&supervisor);
        supervisor.spawn("relay", relay);
        supervisor.spawn("consumer", async { panic!("a handler's unwrap") });
        tokio::time::timeout(Duration::from_secs(5), supervisor.failed())
            .await
            .expect("the failure is noticed");
        let failure = supervisor.stop(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(failure.task, "consumer");
        assert_eq!(failure.how, "panicked: a handler's unwrap");
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_too() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("metrics", async {});
        tokio::time::timeout(Duration::from_secs(5), supervisor.failed())
            .await
            .expect("the failure is noticed");
        assert_eq!(
            supervisor
                .stop(Duration::from_secs(5))
                .await
                .unwrap_err()
                .how,
            "ended"
        );
    }

    #[tokio::test]
    async fn a_task_that_could_not_be_built_is_a_failure_and_the_others_run() {
        let mut supervisor = Supervisor::new();
        let relay = well_behaved(&supervisor);
        supervisor.spawn_or_fail("relay", Ok::<_, String>(relay));
        let not_built: Result<std::future::Pending<()>, _> = Err("fetch.wait.max.ms out of range");
        supervisor.spawn_or_fail("consumer", not_built);
        tokio::time::timeout(Duration::from_secs(5), supervisor.failed())
            .await
            .expect("the failure is noticed");
        let failure = supervisor.stop(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            (failure.task, failure.how.as_str()),
            (
                "consumer",
                "could not start (fetch.wait.max.ms out of range)"
            )
        );
    }

    #[tokio::test]
    async fn tasks_that_stop_when_asked_are_no_failure() {
        let mut supervisor = Supervisor::new();
        for name in ["relay", "consumer"] {
            let task = well_behaved(&supervisor);
            supervisor.spawn(name, task);
        }
        let failed = supervisor.failed();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), failed)
                .await
                .is_err(),
            "nothing failed while they run"
        );
        supervisor.stop(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_stop_is_cut_off_after_the_timeout() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("stubborn", std::future::pending());
        let started = std::time::Instant::now();
        supervisor.stop(Duration::from_millis(100)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
