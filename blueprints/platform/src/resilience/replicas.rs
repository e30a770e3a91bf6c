//! Which replicas of a dependency get its calls: load balancing on the caller's side.
//!
//! A gRPC client keeps one HTTP/2 connection and sends every call on it, so behind a
//! ClusterIP Service all of a caller's calls would go to the one pod that connection
//! reached. Instead the caller finds the replicas itself and spreads its calls over them
//! (tonic's balanced channel: power of two choices by load). A dependency's `ADDR` lists one
//! or more `http://host:port`; each host is resolved again every `resolve_every`, and every
//! address it resolves to is a replica: a headless Kubernetes Service's name resolves to
//! its pods, a compose service's name to its containers, and a local run lists each
//! replica's port.
//!
//! Every replica is also probed on the standard gRPC health service every `probe_every`,
//! so one that drains before it stops (NOT_SERVING for its shutdown delay) gets no new calls
//! well before it closes its listener, and one that was killed gets none after its next
//! failed probe. When no replica is healthy, every resolved address keeps getting calls:
//! they then fail fast with the real error (and trip the breaker) instead of waiting for a
//! replica that may never come.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio::task::JoinSet;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Replicas a caller knows per dependency (`state="resolved"`) and those its calls go to
/// (`state="balanced"`).
pub const REPLICAS_GAUGE: &str = "dependency_replicas";

/// One entry of a dependency's `ADDR`: where one or more replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    /// `ADDR`: one or more `http://host:port` (or `https://`), separated by commas.
    pub fn parse_list(addr: &str) -> Result<Vec<Target>, String> {
        let targets = addr
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(
                "no address given; set it to http://host:port, or several separated by commas"
                    .into(),
            );
        }
        Ok(targets)
    }

    fn parse(entry: &str) -> Result<Target, String> {
        let uri: Uri = entry.parse().map_err(|e| {
            format!("`{entry}` is not a valid URI ({e}); write it as http://host:port")
        })?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme.to_string(),
            _ => {
                return Err(format!(
                    "`{entry}` has no http:// or https:// scheme; write it as http://host:port"
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("`{entry}` names no host; write it as http://host:port"))?
            .to_string();
        if !matches!(uri.path(), "" | "/") {
            return Err(format!(
                "`{entry}` has a path; a dependency's address is http://host:port only"
            ));
        }
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Target { scheme, host, port })
    }

    /// The address itself when the host is an IP literal: no lookup needed.
    fn literal(&self) -> Option<SocketAddr> {
        let ip = self.host.trim_start_matches('[').trim_end_matches(']');
        ip.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    async fn resolve(&self) -> std::io::Result<BTreeSet<SocketAddr>> {
        if let Some(addr) = self.literal() {
            return Ok(BTreeSet::from([addr]));
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }

    /// The channel endpoint of one of its replicas; requests still name the target's host.
    fn endpoint(&self, addr: SocketAddr, connect_timeout: Duration) -> Result<Endpoint, String> {
        let origin: Uri = format!("{}://{}:{}", self.scheme, self.host, self.port)
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(Endpoint::from_shared(format!("{}://{addr}", self.scheme))
            .map_err(|e| format!("{e}"))?
            .origin(origin)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true))
    }
}

/// How often replicas are looked up and probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovery {
    /// Names are resolved again this often (a rollout replaces pods and their addresses).
    pub resolve_every: Duration,
    /// Every replica's health is asked this often; keep it well below the callee's
    /// shutdown delay, so a draining replica leaves the balance before it stops accepting.
    pub probe_every: Duration,
}

/// What a caller knows of a dependency's replicas right now; clones see the same counts.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    resolved: Arc<AtomicUsize>,
    balanced: Arc<AtomicUsize>,
}

impl Replicas {
    /// Addresses the dependency's names resolved to.
    pub fn resolved(&self) -> usize {
        self.resolved.load(Ordering::Relaxed)
    }

    /// Addresses calls go to (none until the first lookup of a name finished).
    pub fn balanced(&self) -> usize {
        self.balanced.load(Ordering::Relaxed)
    }
}

/// The balanced channel to `targets`, and the task that keeps its replicas current: it
/// ends by itself once every clone of the channel is dropped. `service` is the gRPC
/// service whose health is probed. Needs a Tokio runtime.
pub fn balance(
    caller: &'static str,
    name: &'static str,
    service: &'static str,
    targets: Vec<Target>,
    discovery: Discovery,
    connect_timeout: Duration,
) -> Result<(Channel, Replicas), String> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| format!("the client of {name} must be built inside the Tokio runtime"))?;
    let mut endpoints = BTreeMap::new();
    for target in &targets {
        if let Some(addr) = target.literal() {
            endpoints.insert(addr, target.endpoint(addr, connect_timeout)?);
        }
    }
    let (channel, changes) = Channel::balance_channel(64.max(endpoints.len()));
    // IP literals take calls at once; names once the task looked them up.
    for (addr, endpoint) in &endpoints {
        let _ = changes.try_send(Change::Insert(*addr, endpoint.clone()));
    }
    let replicas = Replicas::default();
    replicas.balanced.store(endpoints.len(), Ordering::Relaxed);
    let task = Task {
        caller,
        name,
        service,
        targets,
        discovery,
        connect_timeout,
        replicas: replicas.clone(),
        changes,
        resolved: endpoints.keys().map(|a| (*a, 0)).collect(),
        balanced: endpoints.keys().copied().collect(),
        probes: BTreeMap::new(),
    };
    runtime.spawn(task.run());
    Ok((channel, replicas))
}

struct Task {
    caller: &'static str,
    name: &'static str,
    service: &'static str,
    targets: Vec<Target>,
    discovery: Discovery,
    connect_timeout: Duration,
    replicas: Replicas,
    changes: Sender<Change<SocketAddr, Endpoint>>,
    /// Every address known, with the index of the target it came from.
    resolved: BTreeMap<SocketAddr, usize>,
    /// The addresses in the balance.
    balanced: BTreeSet<SocketAddr>,
    /// A health client per resolved address.
    probes: BTreeMap<SocketAddr, HealthClient<Channel>>,
}

impl Task {
    async fn run(mut self) {
        let mut next_lookup = tokio::time::Instant::now();
        loop {
            if self.changes.is_closed() {
                return;
            }
            if tokio::time::Instant::now() >= next_lookup {
                self.look_up().await;
                next_lookup = tokio::time::Instant::now() + self.discovery.resolve_every;
            }
            let serving = self.probe().await;
            // When none is healthy, all of them: calls then fail fast with the real error.
            let wanted: BTreeSet<SocketAddr> = if serving.is_empty() {
                self.resolved.keys().copied().collect()
            } else {
                serving
            };
            if !self.apply(wanted).await {
                return;
            }
            self.record();
            tokio::time::sleep(self.discovery.probe_every).await;
        }
    }

    /// Resolves every target; one that fails to resolve keeps its last addresses.
    async fn look_up(&mut self) {
        let mut found = BTreeMap::new();
        for (index, target) in self.targets.iter().enumerate() {
            match target.resolve().await {
                Ok(addrs) if !addrs.is_empty() => {
                    found.extend(addrs.into_iter().map(|a| (a, index)))
                }
                outcome => {
                    let reason = outcome
                        .err()
                        .map_or_else(|| "no address".to_string(), |e| e.to_string());
                    tracing::warn!(dependency = self.name, host = %target.host, error = %reason, "cannot resolve a dependency's host; keeping its last addresses");
                    found.extend(
                        self.resolved
                            .iter()
                            .filter(|(_, i)| **i == index)
                            .map(|(a, i)| (*a, *i)),
                    );
                }
            }
        }
        self.probes.retain(|addr, _| found.contains_key(addr));
        self.resolved = found;
    }

    /// The resolved addresses whose health service says SERVING (or has no health service).
    async fn probe(&mut self) -> BTreeSet<SocketAddr> {
        let mut probes = JoinSet::new();
        for (addr, index) in &self.resolved {
            let client = match self.probes.get(addr) {
                Some(client) => client.clone(),
                None => match self.targets[*index].endpoint(*addr, self.connect_timeout) {
                    Ok(endpoint) => {
                        let client = HealthClient::new(endpoint.connect_lazy());
                        self.probes.insert(*addr, client.clone());
                        client
                    }
                    Err(_) => continue,
                },
            };
            let (addr, service, limit) = (*addr, self.service, self.discovery.probe_every);
            probes.spawn(async move { (addr, serving(client, service, limit).await) });
        }
        let mut healthy = BTreeSet::new();
        while let Some(Ok((addr, ok))) = probes.join_next().await {
            if ok {
                healthy.insert(addr);
            }
        }
        healthy
    }

    /// Moves the balance to `wanted`; false once the channel is gone.
    async fn apply(&mut self, wanted: BTreeSet<SocketAddr>) -> bool {
        for addr in self
            .balanced
            .difference(&wanted)
            .copied()
            .collect::<Vec<_>>()
        {
            tracing::info!(caller = self.caller, dependency = self.name, replica = %addr, "replica gets no more calls (not serving, or gone)");
            if self.changes.send(Change::Remove(addr)).await.is_err() {
                return false;
            }
            self.balanced.remove(&addr);
        }
        for addr in wanted
            .difference(&self.balanced)
            .copied()
            .collect::<Vec<_>>()
        {
            let Some(endpoint) = self.resolved.get(&addr).and_then(|index| {
                self.targets[*index]
                    .endpoint(addr, self.connect_timeout)
                    .ok()
            }) else {
                continue;
            };
            tracing::info!(caller = self.caller, dependency = self.name, replica = %addr, "replica gets calls");
            if self
                .changes
                .send(Change::Insert(addr, endpoint))
                .await
                .is_err()
            {
                return false;
            }
            self.balanced.insert(addr);
        }
        true
    }

    fn record(&self) {
        self.replicas
            .resolved
            .store(self.resolved.len(), Ordering::Relaxed);
        self.replicas
            .balanced
            .store(self.balanced.len(), Ordering::Relaxed);
        for (state, count) in [
            ("resolved", self.resolved.len()),
            ("balanced", self.balanced.len()),
        ] {
            metrics::gauge!(REPLICAS_GAUGE, "caller" => self.caller, "callee" => self.name, "state" => state)
                .set(count as f64);
        }
    }
}

/// Whether the replica behind `client` reports `service` SERVING within `limit`. One
/// without a health service (UNIMPLEMENTED) answered, so it counts as serving.
async fn serving(mut client: HealthClient<Channel>, service: &str, limit: Duration) -> bool {
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    match tokio::time::timeout(limit, client.check(request)).await {
        Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
        Ok(Err(status)) => status.code() == tonic::Code::Unimplemented,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use tonic::transport::server::TcpIncoming;
    use tonic_health::server::HealthReporter;

    use super::*;

    const SERVICE: &str = "test.v1.TestService";

    /// A replica on loopback: the health service, counting the calls marked `x-test`.
    struct Replica {
        addr: SocketAddr,
        health: HealthReporter,
        calls: Arc<AtomicU32>,
    }

    impl Replica {
        async fn start() -> Replica {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (health, service) = tonic_health::server::health_reporter();
            health
                .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
                .await;
            let calls = Arc::new(AtomicU32::new(0));
            let counter = calls.clone();
            let count = tower::ServiceBuilder::new().map_request(
                move |request: http::Request<tonic::body::Body>| {
                    if request.headers().contains_key("x-test") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    request
                },
            );
            let server = tonic::transport::Server::builder()
                .layer(count)
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener));
            tokio::spawn(server);
            Replica {
                addr,
                health,
                calls,
            }
        }

        async fn set(&self, status: tonic_health::ServingStatus) {
            self.health.set_service_status(SERVICE, status).await;
        }

        fn take_calls(&self) -> u32 {
            self.calls.swap(0, Ordering::SeqCst)
        }
    }

    /// `n` calls through the balanced channel, each marked for the replicas to count.
    async fn calls(channel: &Channel, n: u32) {
        for _ in 0..n {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            request
                .metadata_mut()
                .insert("x-test", "1".parse().unwrap());
            HealthClient::new(channel.clone())
                .check(request)
                .await
                .expect("a replica answers");
        }
    }

    /// Waits (at most 5 s) until `balanced` replicas take calls.
    async fn until_balanced(replicas: &Replicas, balanced: usize) {
        for _ in 0..250 {
            if replicas.balanced() == balanced {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} replicas take calls, not {balanced}",
            replicas.balanced()
        );
    }

    #[tokio::test]
    async fn calls_spread_over_the_serving_replicas_and_leave_one_that_drains() {
        let (a, b) = (Replica::start().await, Replica::start().await);
        let targets = Target::parse_list(&format!("http://{}, http://{}", a.addr, b.addr)).unwrap();
        let discovery = Discovery {
            resolve_every: Duration::from_secs(5),
            probe_every: Duration::from_millis(50),
        };
        let (channel, replicas) = balance(
            "test",
            "dep",
            SERVICE,
            targets,
            discovery,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(replicas.balanced(), 2, "IP literals take calls at once");

        calls(&channel, 60).await;
        let (to_a, to_b) = (a.take_calls(), b.take_calls());
        assert_eq!(to_a + to_b, 60);
        assert!(
            to_a >= 5 && to_b >= 5,
            "both replicas take calls: {to_a} and {to_b}"
        );

        // b drains before it stops: no new call reaches it.
        b.set(tonic_health::ServingStatus::NotServing).await;
        until_balanced(&replicas, 1).await;
        calls(&channel, 20).await;
        assert_eq!(
            (a.take_calls(), b.take_calls()),
            (20, 0),
            "the draining replica gets no calls"
        );

        // None serving: every replica keeps getting calls, which fail or succeed for real.
        a.set(tonic_health::ServingStatus::NotServing).await;
        until_balanced(&replicas, 2).await;

        // b is back: it alone takes calls until a serves again.
        b.set(tonic_health::ServingStatus::Serving).await;
        until_balanced(&replicas, 1).await;
        calls(&channel, 10).await;
        assert_eq!((a.take_calls(), b.take_calls()), (0, 10));
        a.set(tonic_health::ServingStatus::Serving).await;
        until_balanced(&replicas, 2).await;
        assert_eq!(replicas.resolved(), 2);
    }

    #[tokio::test]
    async fn a_name_resolves_to_its_replicas() {
        let a = Replica::start().await;
        let targets = Target::parse_list(&format!("http://localhost:{}", a.addr.port())).unwrap();
        let discovery = Discovery {
            resolve_every: Duration::from_secs(5),
            probe_every: Duration::from_millis(50),
        };
        let (channel, replicas) = balance(
            "test",
            "dep",
            SERVICE,
            targets,
            discovery,
            Duration::from_secs(1),
        )
        .unwrap();
        until_balanced(&replicas, 1).await;
        calls(&channel, 3).await;
        assert_eq!(a.take_calls(), 3);
    }

    #[test]
    fn an_address_lists_one_or_more_targets() {
        let one = Target::parse_list("http://orders:50051").unwrap();
        assert_eq!(
            one,
            vec![Target {
                scheme: "http".into(),
                host: "orders".into(),
                port: 50051
            }]
        );
        let two = Target::parse_list("http://127.0.0.1:50051, http://127.0.0.1:50151,").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].literal(), Some("127.0.0.1:50151".parse().unwrap()));
        assert_eq!(
            Target::parse_list("https://orders.internal").unwrap()[0].port,
            443
        );
        let v6 = Target::parse_list("http://[::1]:50051").unwrap();
        assert_eq!(v6[0].literal(), Some("[::1]:50051".parse().unwrap()));
    }

    #[test]
    fn a_bad_address_says_how_to_write_it() {
        for bad in [
            "",
            " , ",
            "orders:50051",
            "ftp://orders:1",
            "http://orders:50051/v1",
        ] {
            let error = Target::parse_list(bad).unwrap_err();
            assert!(error.contains("http://host:port"), "{bad:?}: {error}");
        }
    }
}
