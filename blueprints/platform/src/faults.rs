//! Fault injection for end-to-end tests, off unless configured: a delay before every call
//! a service serves (health checks excepted), to make a slow last hop on demand.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

/// `Server::builder().layer(...)`: waits `delay` before each call; a zero delay adds nothing.
#[derive(Debug, Clone, Copy)]
pub struct DelayLayer {
    delay: Duration,
}

impl DelayLayer {
    pub fn new(delay: Duration) -> Self {
        if !delay.is_zero() {
            tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                "fault injection: every call waits before it is served"
            );
        }
        DelayLayer { delay }
    }
}

impl<S> Layer<S> for DelayLayer {
    type Service = Delayed<S>;

    fn layer(&self, inner: S) -> Delayed<S> {
        Delayed {
            delay: self.delay,
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Delayed<S> {
    delay: Duration,
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Delayed<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let delay = self.delay;
        let skip = delay.is_zero() || crate::health::is_health_call(&request);
        // The clone that was made ready serves this call; the fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if !skip {
                tokio::time::sleep(delay).await;
            }
            inner.call(request).await
        })
    }
}
