//! Stopping: `signal` resolves when the process is asked to stop (ctrl-c, or SIGTERM from
//! an orchestrator); `Drain` says how a server then stops without dropping requests.

use std::future::Future;
use std::time::Duration;

use crate::config::{ConfigError, Env};

/// Resolves when the process is asked to stop: SIGTERM from an orchestrator, or ctrl-c
/// (SIGINT). The handlers are installed here, when it is called, not when the future is
/// first polled: a server polls its stop future only after it began serving, and a SIGTERM
/// that arrived in between met the default action and killed the process mid-request (a
/// drain test saw its connection reset). Call it before reporting ready.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind)
                .inspect_err(|e| tracing::error!(error = %e, "cannot listen for {name}"))
                .ok()
        };
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        let interrupt = listen(SignalKind::interrupt(), "ctrl-c");
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = recv(terminate) => {}
                () = recv(interrupt) => {}
            }
            tracing::info!("shutdown requested");
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested");
    }
}

/// How a server stops without dropping requests during a rollout: it first reports not
/// ready and keeps serving for `delay`, so load balancers and Kubernetes endpoints stop
/// sending it new work; then it stops accepting and gives in-flight work at most `timeout`
/// before it stops anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub delay: Duration,
    pub timeout: Duration,
}

impl Drain {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// `<PREFIX>__SHUTDOWN__DELAY_MS` (default 0: stop accepting at once, as a local run
    /// wants; the Kubernetes manifests set it) and `<PREFIX>__SHUTDOWN__DRAIN_TIMEOUT_MS`
    /// (default 10 000).
    pub fn from_env(env: &Env) -> Result<Drain, ConfigError> {
        Ok(Drain {
            delay: Duration::from_millis(env.parse_or("SHUTDOWN__DELAY_MS", 0)?),
            timeout: Duration::from_millis(env.parse_or(
                "SHUTDOWN__DRAIN_TIMEOUT_MS",
                Self::DEFAULT_TIMEOUT.as_millis() as u64,
            )?),
        })
    }

    /// The two moments of a stop, from the stop request `shutdown`: the first future
    /// resolves when the server should stop accepting (after `not_ready` ran and `delay`
    /// passed: give it to the server's graceful shutdown), the second `timeout` after that
    /// (race the server against it). If the server ends first, the second never resolves.
    pub fn phases<S, R, RF>(
        self,
        shutdown: S,
        not_ready: R,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    )
    where
        S: Future<Output = ()> + Send + 'static,
        R: FnOnce() -> RF + Send + 'static,
        RF: Future<Output = ()> + Send,
    {
        let (drain_started, started) = tokio::sync::oneshot::channel::<()>();
        let stop_accepting = async move {
            shutdown.await;
            not_ready().await;
            if !self.delay.is_zero() {
                tracing::info!(
                    delay_ms = self.delay.as_millis() as u64,
                    "stopping: not ready, serving on for the delay"
                );
                tokio::time::sleep(self.delay).await;
            }
            tracing::info!(
                timeout_ms = self.timeout.as_millis() as u64,
                "stopping: no new connections; draining in-flight work"
            );
            let _ = drain_started.send(());
        };
        let deadline = async move {
            if started.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.timeout).await;
            tracing::warn!(
                timeout_ms = self.timeout.as_millis() as u64,
                "in-flight work did not finish in time; stopping anyway"
            );
        };
        (stop_accepting, deadline)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn not_ready_first_then_the_delay_then_a_bounded_drain() {
        let drain = Drain {
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let not_ready = Arc::new(AtomicBool::new(false));
        let flag = not_ready.clone();
        let (stop_accepting, deadline) = drain.phases(
            async move {
                let _ = stopped.await;
            },
            move || async move { flag.store(true, Ordering::SeqCst) },
        );
        let start = tokio::time::Instant::now();
        let accepting = tokio::spawn(async move {
            stop_accepting.await;
            tokio::time::Instant::now()
        });
        let bounded = tokio::spawn(async move {
            deadline.await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !not_ready.load(Ordering::SeqCst),
            "nothing happens before the stop request"
        );
        stop.send(()).unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(not_ready.load(Ordering::SeqCst), "not ready at once");
        let stopped_accepting = accepting.await.unwrap();
        assert_eq!(
            stopped_accepting - start,
            Duration::from_secs(6),
            "accepting for the delay"
        );
        let gave_up = bounded.await.unwrap();
        assert_eq!(
            gave_up - stopped_accepting,
            Duration::from_secs(10),
            "the drain is bounded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_ends_on_its_own_is_never_cut_off() {
        let drain = Drain {
            delay: Duration::ZERO,
            timeout: Duration::from_millis(1),
        };
        let (stop_accepting, deadline) = drain.phases(std::future::pending(), || async {});
        drop(stop_accepting);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), deadline)
                .await
                .is_err(),
            "no stop was requested, so there is no deadline"
        );
    }
}
