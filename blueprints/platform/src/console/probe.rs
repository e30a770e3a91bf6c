//! Live health and RED figures of every node of the map. Every interval the console asks
//! each service's first replica for its gRPC health (the service's own name, so a draining
//! replica shows `not_serving`) and the gateway for `/readyz`, and reads their `/metrics`:
//! the rate and the share of server errors since the last read, and the p99 as the upper
//! bound of the histogram bucket it falls in. Calls of the health service itself (the
//! console's own probes) and the gateway's probe routes are left out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::live::Live;

/// How long one probe of a node may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Serving,
    NotServing,
    /// Not probed yet.
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Serving => "serving",
            Health::NotServing => "not_serving",
            Health::Unknown => "unknown",
        }
    }
}

/// Requests per second, the share of them that failed on the server's side, and the p99 in
/// milliseconds, over the last interval; None without requests (or before a second read).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub rate: Option<f64>,
    pub errors: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub health: Health,
    #[serde(flatten)]
    pub stats: Stats,
}

/// What is probed on one node.
#[derive(Debug, Clone)]
pub enum Check {
    /// gRPC health of `service` at `addr`.
    Grpc { addr: String, service: String },
    /// HTTP `GET /readyz` at `addr`.
    Http { addr: String },
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub check: Check,
    pub metrics_addr: String,
}

/// The counters one `/metrics` read gave: requests, failed ones, and the duration
/// histogram's cumulative buckets (upper bound in seconds, count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub total: f64,
    pub errors: f64,
    pub buckets: Vec<(f64, f64)>,
}

/// The labels of one sample line, or None if the line is not a sample of `metric`.
fn sample<'a>(line: &'a str, metric: &str) -> Option<(BTreeMap<&'a str, &'a str>, f64)> {
    let rest = line.strip_prefix(metric)?;
    let (labels, value) = match rest.strip_prefix('{') {
        Some(rest) => {
            let end = rest.rfind('}')?;
            (&rest[..end], rest[end + 1..].trim())
        }
        None if rest.starts_with(' ') => ("", rest.trim()),
        None => return None,
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let mut map = BTreeMap::new();
    // key="value" pairs; our label values hold no quotes or commas.
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        map.insert(key.trim(), value.trim_matches('"'));
    }
    Some((map, value))
}

/// Reads a gRPC service's counts from its `/metrics` text.
pub fn grpc_counts(text: &str) -> Counts {
    const SERVER_FAULTS: &[&str] = &[
        "Unknown",
        "DeadlineExceeded",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
    ];
    let probe = |labels: &BTreeMap<&str, &str>| {
        labels.get("grpc_service") == Some(&"grpc.health.v1.Health")
    };
    counts(
        text,
        (
            "grpc_server_handled_total",
            "grpc_server_handling_seconds_bucket",
        ),
        probe,
        |labels| {
            labels
                .get("grpc_code")
                .is_some_and(|c| SERVER_FAULTS.contains(c))
        },
    )
}

/// Reads the gateway's counts from its `/metrics` text.
pub fn http_counts(text: &str) -> Counts {
    let probe = |labels: &BTreeMap<&str, &str>| {
        labels
            .get("route")
            .is_some_and(|r| matches!(*r, "/readyz" | "/healthz" | "/livez"))
    };
    counts(
        text,
        (
            "http_requests_total",
            "http_request_duration_seconds_bucket",
        ),
        probe,
        |labels| labels.get("status").is_some_and(|s| s.starts_with('5')),
    )
}

fn counts(
    text: &str,
    (counter, histogram): (&str, &str),
    probe: impl Fn(&BTreeMap<&str, &str>) -> bool,
    failed: impl Fn(&BTreeMap<&str, &str>) -> bool,
) -> Counts {
    let mut counts = Counts::default();
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((labels, value)) = sample(line, counter) {
            if !probe(&labels) {
                counts.total += value;
                if failed(&labels) {
                    counts.errors += value;
                }
            }
        } else if let Some((labels, value)) = sample(line, histogram) {
            let le = labels.get("le").and_then(|le| le.parse::<f64>().ok());
            if let (false, Some(le)) = (probe(&labels), le) {
                *buckets.entry(le.to_bits()).or_default() += value;
            }
        }
    }
    counts.buckets = buckets
        .into_iter()
        .map(|(le, n)| (f64::from_bits(le), n))
        .collect();
    counts
        .buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    counts
}

/// The figures between two reads `elapsed` apart.
pub fn stats(before: &Counts, now: &Counts, elapsed: Duration) -> Stats {
    let requests = now.total - before.total;
    if requests <= 0.0 || elapsed.is_zero() {
        return Stats {
            rate: Some(0.0),
            ..Stats::default()
        };
    }
    let delta = |le: f64, n: f64| {
        n - before
            .buckets
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, m)| *m)
    };
    let observed = now.buckets.last().map_or(0.0, |&(le, n)| delta(le, n));
    let p99_ms = now
        .buckets
        .iter()
        .find(|&&(le, n)| observed > 0.0 && delta(le, n) >= 0.99 * observed)
        .map(|&(le, _)| {
            if le.is_finite() {
                le * 1000.0
            } else {
                f64::INFINITY
            }
        })
        .filter(|ms| ms.is_finite());
    Stats {
        rate: Some(requests / elapsed.as_secs_f64()),
        errors: Some((now.errors - before.errors).max(0.0) / requests),
        p99_ms,
    }
}

async fn health(check: &Check, http: &reqwest::Client) -> Health {
    match check {
        Check::Grpc { addr, service } => {
            let call = async {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .ok()?
                    .connect_timeout(PROBE_TIMEOUT)
                    .connect()
                    .await
                    .ok()?;
                HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().status)
            };
            match tokio::time::timeout(PROBE_TIMEOUT, call).await {
                Ok(Some(status)) if status == ServingStatus::Serving as i32 => Health::Serving,
                _ => Health::NotServing,
            }
        }
        Check::Http { addr } => match http.get(format!("http://{addr}/readyz")).send().await {
            Ok(response) if response.status().is_success() => Health::Serving,
            _ => Health::NotServing,
        },
    }
}

async fn metrics(target: &Target, http: &reqwest::Client) -> Option<Counts> {
    let text = http
        .get(format!("http://{}/metrics", target.metrics_addr))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    Some(match target.check {
        Check::Grpc { .. } => grpc_counts(&text),
        Check::Http { .. } => http_counts(&text),
    })
}

/// The latest status of every node, in the map's order.
#[derive(Clone)]
pub struct Statuses(Arc<Mutex<Vec<NodeStatus>>>);

impl Statuses {
    pub fn new(targets: &[Target]) -> Statuses {
        Statuses(Arc::new(Mutex::new(
            targets
                .iter()
                .map(|t| NodeStatus {
                    name: t.name.clone(),
                    health: Health::Unknown,
                    stats: Stats::default(),
                })
                .collect(),
        )))
    }

    pub fn get(&self) -> Vec<NodeStatus> {
        self.0.lock().expect("statuses lock").clone()
    }
}

/// Probes every target each `interval` until `stop`, keeps the result in `statuses` and
/// sends it to the pages as the `health` snapshot.
pub async fn run(
    targets: Vec<Target>,
    interval: Duration,
    statuses: Statuses,
    live: Live,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .expect("a client without TLS settings builds");
    let mut before: Vec<Option<(Counts, Instant)>> = vec![None; targets.len()];
    loop {
        let probes = targets.iter().map(|t| async {
            let (health, counts) = tokio::join!(health(&t.check, &http), metrics(t, &http));
            (health, counts, Instant::now())
        });
        let results = futures_util::future::join_all(probes).await;
        let mut now = Vec::with_capacity(targets.len());
        for (i, (health, counts, at)) in results.into_iter().enumerate() {
            let stats = match (&before[i], &counts) {
                (Some((b, then)), Some(c)) => stats(b, c, at.duration_since(*then)),
                _ => Stats::default(),
            };
            before[i] = counts.map(|c| (c, at));
            now.push(NodeStatus {
                name: targets[i].name.clone(),
                health,
                stats,
            });
        }
        let data = serde_json::to_string(&now).expect("statuses serialize");
        *statuses.0.lock().expect("statuses lock") = now;
        live.snapshot("health", data);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE grpc_server_handled_total counter
grpc_server_handled_total{grpc_service="shop.orders.v1.OrdersService",grpc_method="GetOrder",grpc_code="OK"} 90
grpc_server_handled_total{grpc_service="shop.orders.v1.OrdersService",grpc_method="GetOrder",grpc_code="NotFound"} 5
grpc_server_handled_total{grpc_service="shop.orders.v1.OrdersService",grpc_method="CreateOrder",grpc_code="Unavailable"} 5
grpc_server_handled_total{grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="OK"} 1000
grpc_server_handling_seconds_bucket{grpc_service="shop.orders.v1.OrdersService",grpc_method="GetOrder",le="0.01"} 50
grpc_server_handling_seconds_bucket{grpc_service="shop.orders.v1.OrdersService",grpc_method="GetOrder",le="0.025"} 98
grpc_server_handling_seconds_bucket{grpc_service="shop.orders.v1.OrdersService",grpc_method="GetOrder",le="0.05"} 99
grpc_server_handling_seconds_bucket{grpc_service="shop.orders.v1.OrdersService",grpc_method="GetOrder",le="+Inf"} 100
grpc_server_handling_seconds_bucket{grpc_service="grpc.health.v1.Health",grpc_method="Check",le="+Inf"} 1000
"#;

    #[test]
    fn figures_leave_out_the_probes_and_count_only_server_faults_as_errors() {
        let now = grpc_counts(METRICS);
        assert_eq!(now.total, 100.0);
        assert_eq!(
            now.errors, 5.0,
            "NotFound is the caller's, Unavailable the server's"
        );
        let stats = stats(&Counts::default(), &now, Duration::from_secs(10));
        assert_eq!(stats.rate, Some(10.0));
        assert_eq!(stats.errors, Some(0.05));
        assert_eq!(stats.p99_ms, Some(50.0), "99 of 100 are within 50 ms");
        // Nothing new since: a rate of 0 and no p99.
        let idle = super::stats(&now, &now, Duration::from_secs(2));
        assert_eq!(idle.rate, Some(0.0));
        assert_eq!(idle.p99_ms, None);
    }

    #[test]
    fn the_gateway_figures_leave_out_its_probe_routes() {
        let text = "http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 50\n\
                    http_requests_total{method=\"POST\",route=\"/v1/orders\",status=\"201\"} 3\n\
                    http_requests_total{method=\"POST\",route=\"/v1/orders\",status=\"503\"} 1\n";
        let counts = http_counts(text);
        assert_eq!((counts.total, counts.errors), (4.0, 1.0));
    }

    #[tokio::test]
    async fn a_closed_port_is_not_serving() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let http = reqwest::Client::new();
        let grpc = Check::Grpc {
            addr: addr.clone(),
            service: "x".into(),
        };
        assert_eq!(health(&grpc, &http).await, Health::NotServing);
        assert_eq!(
            health(&Check::Http { addr }, &http).await,
            Health::NotServing
        );
    }
}
