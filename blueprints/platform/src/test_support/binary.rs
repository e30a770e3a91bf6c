//! A service's real binary, started for its tests on free loopback ports against a test
//! database, with the event bus unreachable (a service must start and serve without it).
//! Its stdout, the JSON log, goes to an unlinked file and shows in every panic about it.

use std::fs::File;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A loopback port nothing listens on right now, for a service binary to bind, from below
/// the kernel's ephemeral range: the listeners a test starts in its own process bind port 0
/// and get ports from that range, so none of them can take this one between now and the
/// child's bind (one did, and the test then talked to another test's server). Each call in a
/// process starts from the port after the last one given, so two tests never get the same.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = ephemeral_range_start();
    let span = ephemeral.saturating_sub(LOWEST).max(1);
    // Processes start apart, so two test binaries running at once rarely meet.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = LOWEST + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral}");
}

/// Where the kernel starts handing out ports for port 0 (Linux's
/// `ip_local_port_range`; 32768, its default, elsewhere).
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A running service binary.
pub struct ServiceProcess {
    pub child: Child,
    /// Its stdout: a file already unlinked, read through this handle.
    log: File,
    pub port: u16,
    pub metrics_port: u16,
}

impl ServiceProcess {
    /// Starts `binary` with `prefix` (the service's settings prefix, e.g. `ORDERS`) naming
    /// its database, its gRPC and metrics addresses and an unreachable broker; `settings`
    /// come on top (keys, dependencies, a test's own).
    pub fn start(
        binary: &str,
        prefix: &str,
        database_url: &str,
        settings: &[(String, String)],
    ) -> ServiceProcess {
        let port = free_port();
        let metrics_port = free_port();
        // Unlinked at once: the service writes and the test reads through open handles,
        // and no run leaves a file behind.
        let name = std::path::Path::new(binary)
            .file_name()
            .map_or_else(|| "service".into(), |n| n.to_string_lossy());
        let log_path =
            std::env::temp_dir().join(format!("{name}-binary-{port}-{}.log", std::process::id()));
        let log_writer = File::create(&log_path).expect("create the service's log file");
        let log = File::open(&log_path).expect("open the service's log file");
        std::fs::remove_file(&log_path).expect("unlink the service's log file");
        let mut command = Command::new(binary);
        command
            .env(format!("{prefix}__DATABASE__URL"), database_url)
            .env(format!("{prefix}__GRPC__ADDR"), format!("127.0.0.1:{port}"))
            .env(
                format!("{prefix}__METRICS__ADDR"),
                format!("127.0.0.1:{metrics_port}"),
            )
            .env(
                format!("{prefix}__{}", UNREACHABLE_BUS.0),
                UNREACHABLE_BUS.1,
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log_writer));
        for (name, value) in settings {
            command.env(name, value);
        }
        let child = command.spawn().expect("start the service binary");
        ServiceProcess {
            child,
            log,
            port,
            metrics_port,
        }
    }

    /// What the service logged so far.
    pub fn log(&mut self) -> String {
        let mut said = String::new();
        self.log.read_to_string(&mut said).ok();
        said
    }

    /// Polls `service`'s health (its gRPC service name, so no other server on the port could
    /// pass for it) until it reports SERVING; bounded by `limit`. A service that exited says
    /// why in its log.
    pub async fn wait_until_serving(&mut self, service: &str, limit: Duration) -> Channel {
        let deadline = Instant::now() + limit;
        let endpoint = self.endpoint();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the service exited before serving: {status}; its log:\n{}",
                    self.log()
                );
            }
            if let Ok(channel) = endpoint.connect().await {
                let this_service = HealthCheckRequest {
                    service: service.to_string(),
                };
                let serving = HealthClient::new(channel.clone())
                    .check(this_service)
                    .await
                    .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
                    .unwrap_or(false);
                if serving {
                    return channel;
                }
            }
            assert!(Instant::now() < deadline, "not serving after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its gRPC address, for a new connection.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port)).unwrap()
    }

    /// `GET /metrics` over a plain loopback connection; returns the body.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("/metrics answers within 5 s")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// Stops it as an orchestrator does and checks the drain: after SIGTERM, `service`'s
    /// health says NOT_SERVING within half of `delay` (its `SHUTDOWN__DELAY_MS`), a call
    /// on a new connection (`call`, which answers the status code it got) is still served
    /// within the delay, and the process exits 0 after it, not before.
    pub async fn assert_drains_on_sigterm<F, Fut>(
        &mut self,
        delay: Duration,
        service: &str,
        call: F,
    ) where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = tonic::Code>,
    {
        let channel = self
            .wait_until_serving(service, Duration::from_secs(30))
            .await;
        self.terminate();
        let stopping = Instant::now();
        // NOT_SERVING at once, so load balancers and endpoints stop sending new work...
        let mut health = HealthClient::new(channel);
        let this_service = HealthCheckRequest {
            service: service.to_string(),
        };
        loop {
            let status = health
                .check(this_service.clone())
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == ServingStatus::NotServing as i32 {
                break;
            }
            assert!(
                stopping.elapsed() < delay / 2,
                "still SERVING {:?} after SIGTERM",
                stopping.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...while calls still arriving, even on a new connection, are served for the delay.
        let fresh = self
            .endpoint()
            .connect()
            .await
            .expect("the listener is still open during the delay");
        let code = call(fresh).await;
        assert_eq!(
            code,
            tonic::Code::NotFound,
            "the call was not served: {code:?}"
        );
        assert!(
            stopping.elapsed() < delay,
            "the checks took longer than the delay"
        );
        let status = self.wait_for_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "exits 0 after the drain, got {status}");
        assert!(
            stopping.elapsed() >= delay,
            "exited {:?} after SIGTERM, before the delay",
            stopping.elapsed()
        );
    }

    /// Sends SIGTERM, as an orchestrator stopping it does.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        assert!(sent.success());
    }

    /// Its exit status, waited for up to `limit` (then killed, and the test fails).
    pub async fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "did not stop within {limit:?} of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `binary` with an invalid `<prefix>__GRPC__ADDR` and nothing else set: it must log
/// `invalid configuration` at ERROR, naming the setting, and exit with 2.
pub fn assert_an_invalid_setting_is_logged_and_exits_2(binary: &str, prefix: &str) {
    let output = Command::new(binary)
        .env_clear()
        .env(format!("{prefix}__GRPC__ADDR"), "not an address")
        .output()
        .expect("run the service binary");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let error = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "invalid configuration")
        .unwrap_or_else(|| panic!("no `invalid configuration` line in: {stdout}"));
    assert_eq!(error["level"], "ERROR");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("{prefix}__"))),
        "{error}"
    );
}

/// The setting (under the service's prefix) that points the bus client at a closed
/// loopback port.
#[cfg(feature = "kafka")]
const UNREACHABLE_BUS: (&str, &str) = ("KAFKA__BROKERS", "127.0.0.1:1");
#[cfg(all(feature = "sqs", not(feature = "kafka")))]
const UNREACHABLE_BUS: (&str, &str) = ("SQS__ENDPOINT", "http://127.0.0.1:1");

/// The value of the one sample whose line starts with `name` and contains every label.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_free_port_is_below_the_ephemeral_range_and_never_given_twice() {
        let ephemeral = super::ephemeral_range_start();
        let ports: Vec<u16> = (0..20).map(|_| super::free_port()).collect();
        assert!(ports.iter().all(|&p| u32::from(p) < ephemeral), "{ports:?}");
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        // What a listener of the test's own gets for port 0 is never among them.
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(u32::from(own.local_addr().unwrap().port()) >= ephemeral);
    }

    #[test]
    fn a_sample_is_found_by_its_name_and_every_label() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\"} 4\n";
        assert_eq!(sample(text, "x", &["a=\"1\"", "b=\"2\""]), Some(3.0));
        assert_eq!(sample(text, "x", &["b=\"3\""]), None);
    }
}
