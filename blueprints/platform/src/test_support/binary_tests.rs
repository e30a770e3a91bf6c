//! The tests every service's real binary shares ([`binary`](super::binary) starts it):
//! migrations at start, health, a create and a get over gRPC while the broker is
//! unreachable, `/metrics` counting the calls and the unpublished event, an invalid
//! setting, the drain on SIGTERM and, for a Kafka consumer, a consumer that cannot be
//! created. A service implements [`ServiceBinary`] for its test fixture (its calls and the
//! services it calls) and instantiates them with [`binary_tests!`](crate::binary_tests).

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;

use super::TestDatabase;
use super::binary::{ServiceProcess, assert_an_invalid_setting_is_logged_and_exits_2, sample};
use crate::service_auth::{self, LinkKey, Minter};

/// A service binary as the shared tests drive it. The fixture is what the binary needs
/// running beside it: the services it calls, or nothing.
pub trait ServiceBinary: Sized + Send + 'static {
    /// The resource as the API returns it.
    type Resource: PartialEq + Debug + Send;

    /// `env!("CARGO_BIN_EXE_<service>")`, as the service's test crate sees it.
    const BINARY: &'static str;
    /// Its settings' prefix, e.g. `ORDERS`.
    const PREFIX: &'static str;
    /// The system and this service, as their link credentials name them.
    const SYSTEM: &'static str;
    const SERVICE: &'static str;
    /// The callers the spec lets call this one.
    const CALLERS: &'static [&'static str];
    /// The gRPC service its health reports on.
    const HEALTH_NAME: &'static str;
    /// The aggregate as its gRPC methods name it (`Create<it>`, `Get<it>`).
    const AGGREGATE: &'static str;

    /// Starts the services the binary calls, in this test process, trusting `key`.
    fn start(key: &LinkKey) -> impl Future<Output = Self>;
    /// Where each of them listens: `(name, address)`.
    fn callees(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Stops what [`start`](ServiceBinary::start) started.
    fn finish(self) -> impl Future<Output = ()> {
        async {}
    }
    /// Creates one resource with the sample values.
    fn create(
        &self,
        channel: Channel,
        credential: Minter,
    ) -> impl Future<Output = Result<Self::Resource, Status>> + Send;
    fn get(
        channel: Channel,
        credential: Minter,
        id: String,
    ) -> impl Future<Output = Result<Self::Resource, Status>> + Send;
    fn id(resource: &Self::Resource) -> String;
}

/// The binary, running against a fresh database, with a random key on every link.
pub struct Running<F> {
    pub service: ServiceProcess,
    pub key: LinkKey,
    pub db: TestDatabase,
    pub fixture: F,
}

impl<F: ServiceBinary> Running<F> {
    /// Starts the binary with a fresh database, the services it calls, a random key on
    /// every link and `extra` settings on top.
    pub async fn start(extra: &[(&str, &str)]) -> Running<F> {
        let db = TestDatabase::create(&format!("{}_bin", F::PREFIX.to_lowercase())).await;
        // Random per run, one for every link: no key is written down.
        let secret = service_auth::random_secret();
        let key = LinkKey::new(&secret).unwrap();
        let fixture = F::start(&key).await;
        let prefix = F::PREFIX;
        let mut settings = Vec::new();
        for caller in F::CALLERS {
            let name = setting_name(caller);
            settings.push((format!("{prefix}__CALLERS__{name}__KEY"), secret.clone()));
        }
        for (callee, addr) in fixture.callees() {
            let name = setting_name(callee);
            settings.push((format!("{prefix}__DEPS__{name}__ADDR"), addr));
            settings.push((format!("{prefix}__DEPS__{name}__KEY"), secret.clone()));
        }
        let extra = extra.iter().map(|(n, v)| (n.to_string(), v.to_string()));
        settings.extend(extra);
        let service = ServiceProcess::start(F::BINARY, prefix, &db.url, &settings);
        Running {
            service,
            key,
            db,
            fixture,
        }
    }

    /// The credential the gateway calls with.
    pub fn gateway(&self) -> Minter {
        Minter::new(&self.key, F::SYSTEM, "gateway", F::SERVICE)
    }

    pub async fn finish(self) {
        self.db.drop_database().await;
        self.fixture.finish().await;
    }
}

/// A peer's name as a setting's key segment.
fn setting_name(peer: &str) -> String {
    peer.to_uppercase().replace('-', "_")
}

/// `<prefix>__SHUTDOWN__DELAY_MS` set to `delay`.
fn shutdown_delay<F: ServiceBinary>(delay: Duration) -> (String, String) {
    let name = format!("{}__SHUTDOWN__DELAY_MS", F::PREFIX);
    (name, delay.as_millis().to_string())
}

pub async fn the_binary_migrates_serves_grpc_and_stops_gracefully<F: ServiceBinary>() {
    let mut running = Running::<F>::start(&[]).await;
    let channel = running
        .service
        .wait_until_serving(F::HEALTH_NAME, Duration::from_secs(30))
        .await;
    let created = running.fixture.create(channel.clone(), running.gateway());
    let created = created.await.expect("create over gRPC");
    let fetched = F::get(channel, running.gateway(), F::id(&created));
    assert_eq!(fetched.await.expect("get over gRPC"), created);

    // The calls are counted by method and status, and the event the unreachable broker
    // could not take waits in the outbox.
    let metrics = running.service.scrape().await;
    let handled = |method: &str| {
        let method = format!("grpc_method=\"{method}\"");
        let labels = [method.as_str(), "grpc_code=\"OK\""];
        sample(&metrics, "grpc_server_handled_total", &labels)
    };
    let create = format!("Create{}", F::AGGREGATE);
    assert_eq!(handled(&create), Some(1.0), "{metrics}");
    assert_eq!(
        handled(&format!("Get{}", F::AGGREGATE)),
        Some(1.0),
        "{metrics}"
    );
    let timed = sample(&metrics, "grpc_server_handling_seconds_count", &[&create]);
    assert_eq!(timed, Some(1.0), "{metrics}");
    let backlog = sample(&metrics, "outbox_backlog", &[]);
    assert_eq!(backlog, Some(1.0), "{metrics}");

    let pool = sqlx::PgPool::connect(&running.db.url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(applied >= 1, "migrations were applied at start");
    pool.close().await;

    running.service.terminate();
    let status = running.service.wait_for_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    running.finish().await;
}

/// Log lines are written by a thread of their own: the last ones, logged just before
/// `main` returns, must still reach stdout.
pub fn an_invalid_setting_is_logged_before_the_binary_exits_with_2<F: ServiceBinary>() {
    assert_an_invalid_setting_is_logged_and_exits_2(F::BINARY, F::PREFIX);
}

pub async fn on_sigterm_it_reports_not_serving_but_serves_on_for_the_delay_then_exits_cleanly<
    F: ServiceBinary,
>() {
    let delay = Duration::from_millis(1500);
    let (name, value) = shutdown_delay::<F>(delay);
    let mut running = Running::<F>::start(&[(&name, &value)]).await;
    let credential = running.gateway();
    // A Get of an id that does not exist: NOT_FOUND means it was served.
    let get = |channel| async move {
        let missing = uuid::Uuid::now_v7().to_string();
        let got = F::get(channel, credential, missing).await;
        got.map_or_else(|status| status.code(), |_| tonic::Code::Ok)
    };
    running
        .service
        .assert_drains_on_sigterm(delay, F::HEALTH_NAME, get)
        .await;
    running.finish().await;
}

#[cfg(feature = "kafka")]
pub async fn a_consumer_that_cannot_be_created_makes_it_not_serving_and_exit_non_zero<
    F: ServiceBinary,
>() {
    use std::time::Instant;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    // librdkafka refuses a consumer whose fetch wait is past 300 s; the producer and the
    // lag probe do not use the setting, so the service gets as far as serving.
    let fetch_wait = format!("{}__KAFKA__FETCH_WAIT_MS", F::PREFIX);
    let (name, value) = shutdown_delay::<F>(Duration::from_millis(1500));
    let mut running = Running::<F>::start(&[(&fetch_wait, "400000"), (&name, &value)]).await;
    let endpoint = running.service.endpoint();
    let this_service = HealthCheckRequest {
        service: F::HEALTH_NAME.to_string(),
    };
    let started = Instant::now();
    let mut not_serving = false;
    let exited = |running: &mut Running<F>| running.service.child.try_wait().unwrap().is_some();
    while !not_serving && started.elapsed() < Duration::from_secs(30) && !exited(&mut running) {
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel)
                .check(this_service.clone())
                .await
                .map(|r| r.into_inner().status);
            not_serving = status.is_ok_and(|s| s == ServingStatus::NotServing as i32);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !not_serving {
        let _ = running.service.child.kill();
        panic!("health never said NOT_SERVING");
    }
    let status = running.service.wait_for_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(1),
        "the supervisor's failure, not a startup or configuration error: {status}"
    );
    running.finish().await;
}

/// The shared binary tests, over a service's [`ServiceBinary`] fixture; with
/// `kafka_consumer`, also the test of a consumer that cannot be created.
#[macro_export]
macro_rules! binary_tests {
    ($fixture:ty) => {
        #[test]
        fn an_invalid_setting_is_logged_before_the_binary_exits_with_2() {
            $crate::test_support::binary_tests::an_invalid_setting_is_logged_before_the_binary_exits_with_2::<$fixture>();
        }
        $crate::binary_tests!(@async $fixture:
            the_binary_migrates_serves_grpc_and_stops_gracefully,
            on_sigterm_it_reports_not_serving_but_serves_on_for_the_delay_then_exits_cleanly
        );
    };
    ($fixture:ty, kafka_consumer) => {
        $crate::binary_tests!($fixture);
        $crate::binary_tests!(@async $fixture:
            a_consumer_that_cannot_be_created_makes_it_not_serving_and_exit_non_zero
        );
    };
    (@async $fixture:ty: $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $crate::test_support::binary_tests::$test::<$fixture>().await;
            }
        )+
    };
}
