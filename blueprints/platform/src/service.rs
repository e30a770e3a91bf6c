//! What every service process does around its own use cases: its settings from the
//! environment ([`Settings`]), its start (database, migrations, bus clients, listeners:
//! [`Runtime::start`]) and its run until stopped ([`Runtime::serve`]: gRPC with health,
//! admission and observation, `/metrics`, the relay and the purge, a graceful drain). A
//! generated service adds its gRPC service, its consumer and sagas, and its dependencies.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;

use crate::adapter::{Bus, BusConfig};
use crate::config::{ConfigError, Env};
use crate::db::DbConfig;
use crate::faults::DelayLayer;
use crate::idempotency::Retention;
use crate::metrics::{MetricsServer, Refresh, outbox_backlog};
use crate::observe::GrpcObserveLayer;
use crate::relay::{self, RelayConfig};
use crate::service_auth::{Admission, LinkKey};
use crate::shutdown::Drain;
use crate::supervise::{Supervisor, TaskFailed};

/// How long background tasks get to finish after the server stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who a service is, as its credentials and its settings name it.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Names in the service credentials' issuers and audiences (`<system>.<process>`).
    pub system: &'static str,
    pub service: &'static str,
    /// Who may call it: the gateway and the contexts the spec lets call it.
    pub callers: &'static [&'static str],
    /// Every process of the system, for the `caller` label of refused calls.
    pub peers: &'static [&'static str],
    /// Where gRPC and `/metrics` listen unless `<PREFIX>__GRPC__ADDR` and
    /// `<PREFIX>__METRICS__ADDR` say otherwise.
    pub grpc_port: u16,
    pub metrics_port: u16,
}

/// The settings every service reads, from `<PREFIX>__<SECTION>__<KEY>` variables.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub database: DbConfig,
    /// `None` runs the service without its outbox relay and consumers
    /// (`<PREFIX>__BUS__ENABLED=false`), e.g. in tests that only need gRPC.
    pub bus: Option<BusConfig>,
    /// The key of each link that may call this service ([`Identity::callers`]), from
    /// `<PREFIX>__CALLERS__<CALLER>__KEY`.
    pub callers: Vec<(&'static str, LinkKey)>,
    /// The budget of the calls this service makes while serving a call that came without a
    /// deadline, or outside any call (`<PREFIX>__DEPS__DEADLINE_MS`).
    pub call_deadline: Duration,
    /// How long idempotency keys are kept (`<PREFIX>__IDEMPOTENCY__RETENTION_SECS`, default
    /// a day) before a background task purges them.
    pub idempotency: Retention,
    /// How it stops: not ready first, then a delay, then a bounded drain
    /// (`<PREFIX>__SHUTDOWN__DELAY_MS`, `..__DRAIN_TIMEOUT_MS`).
    pub drain: Drain,
    /// For fault-injection tests only: every call (but health checks) waits this long before
    /// it is served (`<PREFIX>__FAULTS__DELAY_MS`, default 0: off).
    pub injected_delay: Duration,
}

impl Settings {
    /// Only where gRPC listens: what a health check needs, without the rest.
    pub fn grpc_addr(env: &Env, identity: &Identity) -> Result<SocketAddr, ConfigError> {
        env.parse_or(
            "GRPC__ADDR",
            SocketAddr::from((Ipv4Addr::LOCALHOST, identity.grpc_port)),
        )
    }

    /// `database_hint` says what `<PREFIX>__DATABASE__URL` should name when it is missing.
    pub fn from_env(
        env: &Env,
        identity: &Identity,
        database_hint: &'static str,
    ) -> Result<Settings, ConfigError> {
        Ok(Settings {
            grpc_addr: Settings::grpc_addr(env, identity)?,
            metrics_addr: env.parse_or(
                "METRICS__ADDR",
                SocketAddr::from((Ipv4Addr::LOCALHOST, identity.metrics_port)),
            )?,
            database: DbConfig {
                url: env.required("DATABASE__URL", database_hint)?,
                max_connections: env.parse_or("DATABASE__MAX_CONNECTIONS", 10)?,
                connect_attempts: env.parse_or("DATABASE__CONNECT_ATTEMPTS", 10)?,
                statement_timeout: Duration::from_millis(
                    env.parse_or("DATABASE__STATEMENT_TIMEOUT_MS", 5000)?,
                ),
            },
            bus: if env.parse_or("BUS__ENABLED", true)? {
                Some(BusConfig::from_env(env)?)
            } else {
                None
            },
            callers: identity
                .callers
                .iter()
                .map(|caller| {
                    let key = LinkKey::from_env(
                        env,
                        &format!("CALLERS__{}__KEY", caller.to_uppercase().replace('-', "_")),
                        "set it to the key of this caller's link, the same value the caller has (at least 32 characters; deploy/local/up.sh and deploy/compose-env.sh generate one per link)",
                    )?;
                    Ok((*caller, key))
                })
                .collect::<Result<_, ConfigError>>()?,
            call_deadline: Duration::from_millis(env.parse_or("DEPS__DEADLINE_MS", 3000)?),
            idempotency: Retention {
                keep: Duration::from_secs(env.parse_or(
                    "IDEMPOTENCY__RETENTION_SECS",
                    Retention::default().keep.as_secs(),
                )?),
                ..Retention::default()
            },
            drain: Drain::from_env(env)?,
            injected_delay: Duration::from_millis(env.parse_or("FAULTS__DELAY_MS", 0)?),
        })
    }

    /// A service in-process, for tests and tools: loopback ports the OS chooses, no bus,
    /// `database_url`, and `key` on the link of every caller.
    pub fn in_process(database_url: &str, key: &LinkKey, identity: &Identity) -> Settings {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Settings {
            grpc_addr: loopback,
            metrics_addr: loopback,
            database: DbConfig {
                url: database_url.to_string(),
                max_connections: 5,
                connect_attempts: 1,
                statement_timeout: Duration::from_secs(5),
            },
            bus: None,
            callers: identity.callers.iter().map(|c| (*c, key.clone())).collect(),
            call_deadline: Duration::from_secs(3),
            idempotency: Retention::default(),
            drain: Drain {
                delay: Duration::ZERO,
                timeout: Drain::DEFAULT_TIMEOUT,
            },
            injected_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrations(#[from] sqlx::migrate::MigrateError),
    #[error("cannot set up the event bus: {0}")]
    Bus(#[from] crate::bus::BusError),
    #[error("cannot set up the client of a service this one calls: {0}")]
    Dependency(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a running service stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// The events a service publishes: the relay's wake-up and topics.
pub struct Outbox {
    /// Notified after a commit that wrote an outbox row.
    pub written: Arc<Notify>,
    /// The topics the relay publishes to (created if missing).
    pub topics: Vec<String>,
}

/// A started service: connected, migrated and listening, not serving yet.
pub struct Runtime {
    pool: PgPool,
    listener: TcpListener,
    metrics: MetricsServer,
    bus: Option<Arc<Bus>>,
    admission: Admission,
    delay: DelayLayer,
    drain: Drain,
    idempotency: Retention,
}

impl Runtime {
    /// Connects to the database, applies pending migrations, creates the bus clients (which
    /// connect lazily: a broker that is down does not stop the service from starting and
    /// accepting writes) and binds the gRPC and `/metrics` ports. `/metrics` reads the
    /// outbox backlog at each scrape, and whatever `gauges` adds.
    pub async fn start(
        settings: &Settings,
        identity: &Identity,
        migrator: &sqlx::migrate::Migrator,
        gauges: impl FnOnce(&PgPool, Option<&Bus>) -> Result<Vec<Refresh>, crate::bus::BusError>,
    ) -> Result<Runtime, StartupError> {
        let pool = crate::db::connect(&settings.database)
            .await
            .map_err(StartupError::Database)?;
        let mut migrations = crate::db::migrations_connection(&pool)
            .await
            .map_err(StartupError::Database)?;
        migrator.run(&mut migrations).await?;
        drop(migrations);
        let bus = match &settings.bus {
            Some(bus) => Some(Bus::connect(bus).await?),
            None => None,
        };
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: settings.grpc_addr,
                source,
            })?;
        let mut refresh = vec![outbox_backlog(pool.clone())];
        refresh.extend(gauges(&pool, bus.as_ref())?);
        let metrics = MetricsServer::bind(settings.metrics_addr, refresh)
            .await
            .map_err(|source| StartupError::Bind {
                addr: settings.metrics_addr,
                source,
            })?;
        Ok(Runtime {
            pool,
            listener,
            metrics,
            bus: bus.map(Arc::new),
            admission: Admission::new(
                identity.system,
                identity.service,
                &settings.callers,
                identity.peers,
                settings.call_deadline,
            ),
            delay: DelayLayer::new(settings.injected_delay),
            drain: settings.drain,
            idempotency: settings.idempotency,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr()
    }

    /// Serves `service` over gRPC (with the standard health service) and runs the
    /// background tasks (`/metrics`, the idempotency purge, the relay when there is a bus,
    /// and what `background` spawns with the bus and the stop signal) until `shutdown`
    /// resolves; then reports NOT_SERVING, serves on for the drain delay, finishes
    /// in-flight requests (within the drain timeout), lets the tasks stop at a message
    /// boundary, and closes the pool. A background task that ends early (a panic in a
    /// handler, say) stops it the same way, and it returns that failure, so the process
    /// exits non-zero and its orchestrator restarts it.
    pub async fn serve<S>(
        self,
        service: S,
        outbox: Outbox,
        background: impl FnOnce(&mut Supervisor, Option<&Arc<Bus>>, &watch::Receiver<bool>),
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError>
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        let pool = self.pool;
        // The background tasks: one that ends early stops the process (see `supervise`).
        let mut tasks = Supervisor::new();
        let stopped = tasks.stopping();
        let (metrics, metrics_stop) = (self.metrics, stopped.clone());
        tasks.spawn("metrics", async move {
            if let Err(e) = metrics.serve(metrics_stop).await {
                tracing::error!(error = %e, "/metrics stopped serving");
            }
        });
        tasks.spawn(
            "idempotency purge",
            crate::idempotency::run_purge(pool.clone(), self.idempotency, stopped.clone()),
        );
        if let Some(bus) = &self.bus {
            tasks.spawn(
                "relay",
                relay::run(
                    pool.clone(),
                    bus.clone(),
                    outbox.written,
                    RelayConfig::new(outbox.topics),
                    stopped.clone(),
                ),
            );
        }
        background(&mut tasks, self.bus.as_ref(), &stopped);

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<S>().await;
        // Stopping: NOT_SERVING at once, serving on for the drain delay, then no new
        // connections and at most the drain timeout for the calls in flight.
        let (stop_accepting, drain_deadline) =
            self.drain
                .phases(tasks.stop_requested(shutdown), move || async move {
                    health.set_not_serving::<S>().await;
                });
        // Outermost first: the span, metrics and log line of every call (refused ones too);
        // admission of the caller (every RPC but health needs a credential the spec admits),
        // which also sets the deadline the calls made while serving inherit; and the
        // fault-injection delay, off unless configured.
        let layers = tower::ServiceBuilder::new()
            .layer(GrpcObserveLayer)
            .layer(self.admission)
            .layer(self.delay)
            .into_inner();
        let server = tonic::transport::Server::builder()
            .layer(layers)
            .add_service(health_service)
            .add_service(service)
            // TCP_NODELAY: without it a response written in two segments waited for the
            // client's delayed ACK, 40 ms on Linux.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                stop_accepting,
            );
        let served = tokio::select! {
            served = server => served,
            () = drain_deadline => Ok(()),
        };

        let tasks = tasks.stop(DRAIN_TIMEOUT).await;
        pool.close().await;
        served?;
        Ok(tasks?)
    }
}
