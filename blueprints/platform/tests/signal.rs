//! `shutdown::signal` listens from the moment it is called. Its own test binary: once a
//! process has a SIGTERM handler it keeps it, so another test could hide a lazy one.

use std::time::Duration;

#[tokio::test]
async fn a_sigterm_before_the_stop_future_is_polled_is_not_lost_and_does_not_kill() {
    let stop = platform::shutdown::signal();
    // Not polled yet, as when a server takes its first connection before its stop future.
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    // The default action would have ended this process by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("the SIGTERM sent before the first poll stops it");
}
