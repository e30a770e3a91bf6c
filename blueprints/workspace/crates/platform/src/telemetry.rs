//! Logging: JSON lines on stdout, one object per event, filtered by `RUST_LOG`
//! (default `info`). Safe to call more than once (tests do): later calls are no-ops.

use tracing_subscriber::EnvFilter;

pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(service, "telemetry initialised");
    }
}
