//! Kafka adapter on rdkafka, with librdkafka built from source (`cmake-build`): Debian's
//! librdkafka 2.0 fails the ApiVersion handshake with some brokers, the bundled 2.x does
//! not (ADR 0001 in docs/adr). Topics are created on demand and again after a broker comes
//! back empty; each consuming service is one consumer group. A message's offset is
//! committed right after it was applied or dead-lettered (asynchronously, in order), so
//! nothing is lost and a crash replays at most the few messages whose commit had not
//! reached the broker, which the inbox makes no-ops. A member left with no partition while
//! messages wait joins its group again. Every client shares the brokers' TLS and SASL
//! settings; topics are created with the configured partitions and replicas. The producer
//! is idempotent; one that keeps failing is replaced (see [`Bus::publish`]); a message the
//! broker refuses for good is reported as such, so the relay parks it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::bus::{BusError, Delivery, OutgoingMessage, Publisher, Receipt, Subscriber};
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct BusConfig {
    /// `host:port,...` of the Kafka bootstrap brokers.
    pub brokers: String,
    /// How long a publish may wait for the broker before it counts as failed.
    pub publish_timeout: Duration,
    /// The longest a consumer's fetch waits at the broker for new messages. Kafka answers
    /// a fetch as soon as a message arrives, so on Kafka this only bounds the empty
    /// fetches of an idle consumer (10 a second at the default of 100 ms). tansu 0.6
    /// holds every fetch for its full wait and answers with what it had when the fetch
    /// began: a message that arrives meanwhile waits out that fetch and all of the next,
    /// between one and two waits (150 ms at the median at 100 ms). On tansu, set it
    /// low: `deploy/local/up.sh` sets 10 ms.
    pub fetch_wait: Duration,
    /// The most records the producer puts in one record batch (librdkafka's
    /// `batch.num.messages`, default 10,000). tansu 0.6 answers a fetch only with batches
    /// that start at or past the offset asked for, so a group that resumes inside a batch
    /// (after a rebalance, a restart, or a replica taking over: consumers commit after
    /// each record) never receives the rest of that batch. On tansu set it to 1, so that
    /// every offset starts a batch: `deploy/local/up.sh` does for every service. Kafka answers the batch
    /// that holds the offset; keep the default there.
    pub batch_max_messages: i32,
    /// How topics this service creates are laid out.
    pub topics: TopicLayout,
    /// How every client connects: TLS, SASL.
    pub security: Security,
}

/// Partitions and replicas of the topics a service creates (existing topics are left as
/// they are). One aggregate's events stay in order in any layout: the aggregate id is
/// the key, and a key always goes to the same partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub partitions: i32,
    pub replication_factor: i32,
}

impl TopicLayout {
    /// With acks=all, writes need this many in-sync replicas: one fewer than the
    /// replicas, so a topic with 3 keeps accepting writes while one broker is down,
    /// and an acknowledged write is on two brokers.
    pub fn min_insync_replicas(&self) -> i32 {
        (self.replication_factor - 1).max(1)
    }
}

/// TLS and SASL for every client (producer, consumers, admin).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// librdkafka's `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: String,
    pub sasl: Option<Sasl>,
    /// A PEM file of the CAs that sign the brokers' certificates; the system's CAs when
    /// unset.
    pub ca_location: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Security {
    // The password must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl.as_ref().map(|s| &s.mechanism))
            .field("sasl_username", &self.sasl.as_ref().map(|s| &s.username))
            .field("ca_location", &self.ca_location)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Checks that the settings make sense together; the error says what to change.
    pub fn new(
        protocol: &str,
        mechanism: Option<String>,
        username: Option<String>,
        password: Option<String>,
        ca_location: Option<String>,
    ) -> Result<Self, String> {
        let protocol = protocol.to_ascii_lowercase();
        let uses_sasl = match protocol.as_str() {
            "plaintext" | "ssl" => false,
            "sasl_plaintext" | "sasl_ssl" => true,
            other => {
                return Err(format!(
                    "`{other}` is not a security protocol; use plaintext, ssl, sasl_plaintext or sasl_ssl"
                ));
            }
        };
        let sasl = match (uses_sasl, mechanism, username, password) {
            (false, None, None, None) => None,
            (false, ..) => {
                return Err(format!(
                    "SASL settings are given but the protocol is {protocol}; use sasl_ssl (or sasl_plaintext on a trusted network)"
                ));
            }
            (true, Some(mechanism), Some(username), Some(password)) => {
                let mechanism = mechanism.to_ascii_uppercase();
                if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                    return Err(format!(
                        "SASL mechanism `{mechanism}` is not supported; use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    ));
                }
                Some(Sasl {
                    mechanism,
                    username,
                    password,
                })
            }
            (true, ..) => {
                return Err(format!(
                    "{protocol} needs KAFKA__SASL__MECHANISM, KAFKA__SASL__USERNAME and KAFKA__SASL__PASSWORD"
                ));
            }
        };
        Ok(Security {
            protocol,
            sasl,
            ca_location,
        })
    }

    /// Sets these settings on a client's configuration.
    fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", &self.protocol);
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanism", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        if let Some(ca) = &self.ca_location {
            config.set("ssl.ca.location", ca);
        }
    }
}

impl BusConfig {
    /// `<SERVICE>__KAFKA__BROKERS` (default `127.0.0.1:9092`),
    /// `<SERVICE>__KAFKA__PUBLISH_TIMEOUT_MS` (default 5000),
    /// `<SERVICE>__KAFKA__FETCH_WAIT_MS` (default 100),
    /// `<SERVICE>__KAFKA__BATCH_MAX_MESSAGES` (default 10000),
    /// `<SERVICE>__KAFKA__TOPIC__PARTITIONS` and `__TOPIC__REPLICATION_FACTOR` (default 1
    /// each: one local broker), `<SERVICE>__KAFKA__SECURITY_PROTOCOL` (default plaintext),
    /// `<SERVICE>__KAFKA__SASL__MECHANISM`, `__SASL__USERNAME`, `__SASL__PASSWORD` and
    /// `<SERVICE>__KAFKA__SSL__CA_LOCATION`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let text = |name: &str| -> Result<Option<String>, ConfigError> {
            Ok(Some(env.parse_or(name, String::new())?).filter(|v| !v.is_empty()))
        };
        let security = Security::new(
            &env.parse_or("KAFKA__SECURITY_PROTOCOL", "plaintext".to_string())?,
            text("KAFKA__SASL__MECHANISM")?,
            text("KAFKA__SASL__USERNAME")?,
            text("KAFKA__SASL__PASSWORD")?,
            text("KAFKA__SSL__CA_LOCATION")?,
        )
        .map_err(|reason| ConfigError::Invalid {
            key: env.key("KAFKA__SECURITY_PROTOCOL"),
            reason,
        })?;
        let at_least_one = |name: &str, default: i32| -> Result<i32, ConfigError> {
            let value: i32 = env.parse_or(name, default)?;
            if value < 1 {
                return Err(ConfigError::Invalid {
                    key: env.key(name),
                    reason: format!("{value}: it must be at least 1"),
                });
            }
            Ok(value)
        };
        Ok(BusConfig {
            brokers: env.parse_or("KAFKA__BROKERS", "127.0.0.1:9092".to_string())?,
            publish_timeout: Duration::from_millis(
                env.parse_or("KAFKA__PUBLISH_TIMEOUT_MS", 5000)?,
            ),
            fetch_wait: Duration::from_millis(env.parse_or("KAFKA__FETCH_WAIT_MS", 100)?),
            batch_max_messages: at_least_one("KAFKA__BATCH_MAX_MESSAGES", 10_000)?,
            topics: TopicLayout {
                partitions: at_least_one("KAFKA__TOPIC__PARTITIONS", 1)?,
                replication_factor: at_least_one("KAFKA__TOPIC__REPLICATION_FACTOR", 1)?,
            },
            security,
        })
    }

    /// A client configuration with the brokers and the security settings: every client
    /// starts from it.
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut config);
        config
    }
}

fn error(e: impl std::fmt::Display) -> BusError {
    BusError::new(e.to_string())
}

/// Whether the broker (or librdkafka, before sending) refused the message itself: larger
/// than `message.max.bytes`, or malformed. Sending it again cannot succeed.
fn is_rejection(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// The producer side, cheap to clone; also creates topics and subscribers.
#[derive(Clone)]
pub struct Bus {
    config: BusConfig,
    producer: Arc<Replaceable<FutureProducer>>,
}

/// Consecutive failed publishes after which the producer is replaced by a new one.
const REPLACE_AFTER: u32 = 3;

/// The producer in use, its generation, and how many of its publishes failed in a row.
/// A failure counts against the producer that sent it: when the broker goes away, every
/// message in flight on the old producer fails after it was replaced, and those must not
/// replace its successor too (one outage replaced the producer once per message in
/// flight, each new one starting over with the broker).
struct Replaceable<P> {
    current: Mutex<Generation<P>>,
}

struct Generation<P> {
    producer: P,
    number: u64,
    failures: u32,
}

impl<P: Clone> Replaceable<P> {
    fn new(producer: P) -> Self {
        Replaceable {
            current: Mutex::new(Generation {
                producer,
                number: 0,
                failures: 0,
            }),
        }
    }

    /// The producer to send with, and its generation to report the outcome against.
    fn get(&self) -> (P, u64) {
        let current = self.current.lock().expect("not poisoned");
        (current.producer.clone(), current.number)
    }

    fn succeeded(&self, generation: u64) {
        let mut current = self.current.lock().expect("not poisoned");
        if current.number == generation {
            current.failures = 0;
        }
    }

    /// Counts a failure of `generation`; at the `REPLACE_AFTER`th in a row of the current
    /// producer, replaces it with `fresh()` and returns true.
    fn failed<E>(&self, generation: u64, fresh: impl FnOnce() -> Result<P, E>) -> Result<bool, E> {
        let mut current = self.current.lock().expect("not poisoned");
        if current.number != generation {
            return Ok(false);
        }
        current.failures += 1;
        if current.failures < REPLACE_AFTER {
            return Ok(false);
        }
        // Creating a producer connects nothing: quick enough under the lock.
        *current = Generation {
            producer: fresh()?,
            number: generation + 1,
            failures: 0,
        };
        Ok(true)
    }
}

fn new_producer(config: &BusConfig) -> Result<FutureProducer, BusError> {
    producer_config(config).create().map_err(error)
}

/// A write is acknowledged once every in-sync replica has it (`acks=all`).
fn producer_config(config: &BusConfig) -> ClientConfig {
    let mut client = config.client();
    client
        .set(
            "message.timeout.ms",
            config.publish_timeout.as_millis().to_string(),
        )
        .set("acks", "all")
        // The relay sends one aggregate's events one after another, each awaited: every
        // message waits out the linger alone (librdkafka's default is 5 ms). A relay
        // batch's aggregates are queued within microseconds of each other, so 1 ms still
        // gathers them into one request.
        .set("linger.ms", "1")
        .set("batch.num.messages", config.batch_max_messages.to_string())
        // Retries never duplicate or reorder a message within a partition, and the
        // aggregate id as key keeps one aggregate in one partition: its events stay in
        // the order the relay sends them.
        .set("enable.idempotence", "true");
    client
}

impl Bus {
    /// Creates the clients; nothing connects until the first message, so a service starts
    /// (and accepts writes) while the broker is down. Async like the SQS adapter's, which
    /// resolves its AWS configuration.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        Ok(Bus {
            config: config.clone(),
            producer: Arc::new(Replaceable::new(new_producer(config)?)),
        })
    }

    /// A consumer in `group` subscribed to `topics`, starting from the earliest offset the
    /// group has not committed. It joins again when its group stopped consuming while it holds
    /// no partition (see `KafkaSubscriber::check_stall`).
    pub fn subscriber(&self, group: &str, topics: &[String]) -> Result<KafkaSubscriber, BusError> {
        Ok(KafkaSubscriber {
            consumer: self.group_member(group, topics)?,
            bus: self.clone(),
            group: group.to_string(),
            topics: topics.to_vec(),
            probe: self.lag_probe(group, topics)?,
            stall: Stall::default(),
        })
    }

    /// A new member of `group`, subscribed to `topics`.
    fn group_member(&self, group: &str, topics: &[String]) -> Result<StreamConsumer, BusError> {
        let consumer: StreamConsumer = self
            .config
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set(
                "fetch.wait.max.ms",
                self.config.fetch_wait.as_millis().to_string(),
            )
            // Notice re-created topics quickly after a broker restart.
            .set("topic.metadata.refresh.interval.ms", "2000")
            .create()
            .map_err(error)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(error)?;
        Ok(consumer)
    }
}

/// How long a stopping consumer lets a receive in flight finish: none, since a Kafka
/// receive reads a local queue and what it has not handed out is read again.
pub const STOP_GRACE: Duration = Duration::ZERO;

/// How long the group waits for a member that stopped heartbeating (a killed process)
/// before it hands that member's partitions to the others.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

impl Bus {
    /// Measures how far `group` is behind on `topics`: messages on the broker that the
    /// group has not committed. Uses a client of its own that never joins the group.
    pub fn lag_probe(&self, group: &str, topics: &[String]) -> Result<LagProbe, BusError> {
        let consumer: BaseConsumer = self
            .config
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(error)?;
        Ok(LagProbe {
            consumer: Arc::new(consumer),
            topics: topics.to_vec(),
            // Each broker query; a scrape waits for the whole probe at most
            // `metrics::REFRESH_BUDGET`.
            timeout: crate::metrics::REFRESH_BUDGET,
        })
    }
}

/// See [`Bus::lag_probe`].
#[derive(Clone)]
pub struct LagProbe {
    consumer: Arc<BaseConsumer>,
    topics: Vec<String>,
    timeout: Duration,
}

/// Where a group stands: what waits for it, and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Sum over every partition of the high watermark minus the group's position.
    pub lag: u64,
    /// Sum over every partition of the group's committed offset (the low watermark where
    /// it committed nothing: it starts from the earliest). It grows while anyone consumes.
    pub position: i64,
}

impl LagProbe {
    /// See [`Progress::lag`].
    pub async fn lag(&self) -> Result<u64, BusError> {
        Ok(self.progress().await?.lag)
    }

    pub async fn progress(&self) -> Result<Progress, BusError> {
        let probe = self.clone();
        // librdkafka's metadata and offset queries block: keep them off the runtime.
        tokio::task::spawn_blocking(move || probe.progress_blocking())
            .await
            .map_err(error)?
    }

    fn progress_blocking(&self) -> Result<Progress, BusError> {
        let mut partitions = TopicPartitionList::new();
        let mut watermarks = Vec::new();
        for topic in &self.topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), self.timeout)
                .map_err(error)?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition.id(), self.timeout)
                    .map_err(error)?;
                partitions.add_partition(topic, partition.id());
                watermarks.push((topic.clone(), partition.id(), low, high));
            }
        }
        let committed = self
            .consumer
            .committed_offsets(partitions, self.timeout)
            .map_err(error)?;
        let (mut lag, mut position) = (0i64, 0i64);
        for (topic, partition, low, high) in watermarks {
            let at = match committed
                .find_partition(&topic, partition)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => low,
            };
            lag += (high - at).max(0);
            position += at;
        }
        Ok(Progress {
            lag: lag.try_into().unwrap_or(0),
            position,
        })
    }
}

impl Publisher for Bus {
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), BusError> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (key, value) in &message.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(&message.topic)
            .key(&message.key)
            .payload(&message.payload)
            .headers(headers);
        let (producer, generation) = self.producer.get();
        match producer.send(record, self.config.publish_timeout).await {
            Ok(_) => {
                self.producer.succeeded(generation);
                Ok(())
            }
            Err((e, _)) if is_rejection(&e) => Err(BusError::rejected(e.to_string())),
            Err((e, _)) => {
                // An idempotent producer whose broker lost its state (a broker rebuilt
                // empty, or a cluster restored elsewhere) times out on every message for
                // good. A new producer gets a new producer id and starts over; the relay
                // sends the failed message again (consumers deduplicate).
                match self
                    .producer
                    .failed(generation, || new_producer(&self.config))
                {
                    Ok(true) => tracing::warn!(
                        "replaced the Kafka producer after {REPLACE_AFTER} failed publishes"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot replace the Kafka producer"),
                }
                Err(error(e))
            }
        }
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> =
            self.config.client().create().map_err(error)?;
        let layout = &self.config.topics;
        let min_insync = layout.min_insync_replicas().to_string();
        let wanted: Vec<NewTopic> = topics
            .iter()
            .map(|t| {
                let topic = NewTopic::new(
                    t,
                    layout.partitions,
                    TopicReplication::Fixed(layout.replication_factor),
                );
                // A single broker has no other replica to wait for.
                if layout.replication_factor > 1 {
                    topic.set("min.insync.replicas", &min_insync)
                } else {
                    topic
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.config.publish_timeout));
        for result in admin
            .create_topics(&wanted, &options)
            .await
            .map_err(error)?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::new(format!(
                        "cannot create topic {topic}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The subscriber type of this bus, named the same for every adapter.
pub type BusSubscriber = KafkaSubscriber;

pub struct KafkaSubscriber {
    consumer: StreamConsumer,
    bus: Bus,
    group: String,
    topics: Vec<String>,
    probe: LagProbe,
    stall: Stall,
}

/// What the stall check saw last time, while this member held nothing: the group's
/// position, if messages were waiting then.
#[derive(Debug, Default)]
struct Stall {
    waiting_at: Option<i64>,
}

impl Stall {
    /// Whether the group is stalled, from this check and the last: messages waited at both
    /// and nobody committed anything in between. One check alone proves nothing: events
    /// that arrived a moment ago wait, and the position has not moved since a quiet spell.
    /// (A replica left idle because another holds the only partition sees the position
    /// move, however long the backlog.)
    fn observe(&mut self, Progress { lag, position }: Progress) -> bool {
        let stalled = lag > 0 && self.waiting_at == Some(position);
        self.waiting_at = (lag > 0).then_some(position);
        stalled
    }
}

impl KafkaSubscriber {
    /// Called when no message came for a session timeout. A member that holds no
    /// partition while messages wait and the group's committed position stays put (nobody
    /// consumes them; see [`Stall::observe`]) joins the group again as a new member, which
    /// makes the group assign its partitions afresh.
    ///
    /// Why: a member killed without leaving (SIGKILL, OOM, a lost node) stays the group's
    /// leader until its session times out. A member that joined meanwhile can be handed
    /// an empty assignment that no later rebalance corrects: tansu 0.6 completes the
    /// rebalance without the dead leader's assignment and considers the group stable
    /// (see the README's broker notes). Then nobody consumes until a restart. On a broker
    /// without that fault the check never fires: an idle member of a group whose other
    /// members consume sees the position move, even while a backlog grows.
    async fn check_stall(&mut self) -> Result<(), BusError> {
        let assigned = self.consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned > 0 {
            self.stall = Stall::default();
            return Ok(());
        }
        let progress = match self.probe.progress().await {
            Ok(progress) => progress,
            // The broker is unreachable: nothing to decide now.
            Err(_) => return Ok(()),
        };
        if !self.stall.observe(progress) {
            return Ok(());
        }
        let lag = progress.lag;
        tracing::warn!(
            group = %self.group,
            lag,
            "no member of the group consumes while messages wait; joining it again"
        );
        metrics::counter!(crate::metrics::CONSUMER_REJOINS).increment(1);
        let fresh = self.bus.group_member(&self.group, &self.topics)?;
        let stale = std::mem::replace(&mut self.consumer, fresh);
        // Closing leaves the group; librdkafka's close blocks, so off the runtime.
        let _ = tokio::task::spawn_blocking(move || drop(stale)).await;
        self.stall = Stall::default();
        Ok(())
    }
}

impl Subscriber for KafkaSubscriber {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let message = loop {
            // Dropping a pending `recv` loses nothing: messages stay in the consumer's queue.
            match tokio::time::timeout(SESSION_TIMEOUT, self.consumer.recv()).await {
                // Owned, so the loop does not hold a borrow of the consumer it may replace.
                Ok(received) => break received.map_err(error)?.detach(),
                Err(_quiet) => self.check_stall().await?,
            }
        };
        self.stall = Stall::default();
        let mut headers = BTreeMap::new();
        if let Some(received) = message.headers() {
            for header in received.iter() {
                if let Some(value) = header.value {
                    headers.insert(
                        header.key.to_string(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                }
            }
        }
        Ok(Delivery {
            topic: message.topic().to_string(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
            receipt: Receipt {
                partition: message.partition(),
                offset: message.offset(),
                handle: String::new(),
            },
        })
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &delivery.topic,
                delivery.receipt.partition,
                Offset::Offset(delivery.receipt.offset + 1),
            )
            .map_err(error)?;
        self.consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_a_replaced_producer_do_not_replace_its_successor() {
        let made = std::cell::Cell::new(0u32);
        let fresh = || -> Result<u32, ()> {
            made.set(made.get() + 1);
            Ok(made.get())
        };
        let producers = Replaceable::new(0u32);
        let (_, first) = producers.get();
        // Ten messages in flight on the first producer when the broker went away.
        let replaced: Vec<bool> = (0..10)
            .map(|_| producers.failed(first, fresh).unwrap())
            .collect();
        assert_eq!(replaced.iter().filter(|r| **r).count(), 1, "{replaced:?}");
        assert_eq!(producers.get(), (1, 1));
        // The new producer's own failures count from zero; a success resets them.
        assert!(!producers.failed(1, fresh).unwrap());
        assert!(!producers.failed(1, fresh).unwrap());
        producers.succeeded(1);
        assert!(!producers.failed(1, fresh).unwrap());
        assert!(!producers.failed(1, fresh).unwrap());
        assert!(producers.failed(1, fresh).unwrap());
        assert_eq!(producers.get(), (2, 2));
        // A late success of an old producer does not reset the current one's count.
        assert!(!producers.failed(2, fresh).unwrap());
        producers.succeeded(1);
        assert!(!producers.failed(2, fresh).unwrap());
        assert!(producers.failed(2, fresh).unwrap());
    }

    fn at(lag: u64, position: i64) -> Progress {
        Progress { lag, position }
    }

    #[test]
    fn a_stall_is_messages_waiting_at_two_checks_with_no_commit_between() {
        let mut stall = Stall::default();
        // Quiet, then events arrive just before a check: waiting, but nobody had a chance.
        assert!(!stall.observe(at(0, 100)));
        assert!(
            !stall.observe(at(3, 100)),
            "one check with messages waiting is no stall"
        );
        // Another member consumes: the position moves, however long the backlog grows.
        assert!(!stall.observe(at(40, 150)));
        assert!(!stall.observe(at(90, 230)));
        // Nobody commits while messages wait: stalled at the second check that sees it.
        assert!(!stall.observe(at(5, 300)));
        assert!(stall.observe(at(5, 300)));
        // Caught up in between: the next wait starts over.
        let mut stall = Stall::default();
        assert!(!stall.observe(at(2, 10)));
        assert!(!stall.observe(at(0, 10)));
        assert!(
            !stall.observe(at(1, 10)),
            "after a quiet check, the first wait proves nothing"
        );
    }

    fn config(security: Security) -> BusConfig {
        BusConfig {
            brokers: "127.0.0.1:1".into(),
            publish_timeout: Duration::from_millis(100),
            fetch_wait: Duration::from_millis(100),
            batch_max_messages: 10_000,
            topics: TopicLayout {
                partitions: 1,
                replication_factor: 1,
            },
            security,
        }
    }

    fn some(value: &str) -> Option<String> {
        Some(value.to_string())
    }

    #[test]
    fn security_settings_are_checked_together() {
        let plain = Security::new("plaintext", None, None, None, None).unwrap();
        assert!(plain.protocol == "plaintext" && plain.sasl.is_none());
        let scram = Security::new(
            "SASL_SSL",
            some("scram-sha-512"),
            some("u"),
            some("p"),
            some("/ca.pem"),
        )
        .unwrap();
        assert_eq!(scram.protocol, "sasl_ssl");
        assert_eq!(scram.sasl.as_ref().unwrap().mechanism, "SCRAM-SHA-512");
        let refused = [
            (
                Security::new("tls", None, None, None, None),
                "not a security protocol",
            ),
            (
                Security::new("sasl_ssl", some("PLAIN"), some("u"), None, None),
                "needs KAFKA__SASL__MECHANISM",
            ),
            (
                Security::new("ssl", some("PLAIN"), some("u"), some("p"), None),
                "use sasl_ssl",
            ),
            (
                Security::new("sasl_ssl", some("GSSAPI"), some("u"), some("p"), None),
                "not supported",
            ),
        ];
        for (result, why) in refused {
            let error = result.unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn the_password_never_reaches_a_log() {
        let scram = Security::new(
            "sasl_ssl",
            some("SCRAM-SHA-256"),
            some("svc"),
            some("hunter2-secret"),
            None,
        )
        .unwrap();
        let shown = format!("{:?}", config(scram));
        assert!(
            shown.contains("svc") && !shown.contains("hunter2-secret"),
            "{shown}"
        );
    }

    #[test]
    fn clients_with_tls_and_each_sasl_mechanism_can_be_made() {
        // librdkafka refuses SCRAM (and TLS) at configuration time when it was built
        // without OpenSSL: this is what the `ssl` feature of rdkafka is for.
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let security =
                Security::new("sasl_ssl", some(mechanism), some("u"), some("p"), None).unwrap();
            let _producer =
                new_producer(&config(security)).unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        }
        let tls = Security::new("ssl", None, None, None, None).unwrap();
        let consumer: Result<BaseConsumer, _> = config(tls).client().set("group.id", "g").create();
        consumer.unwrap();
    }

    /// The settings the README's Kafka guarantee rests on (one broker of three may be
    /// lost): topics ask for all but one replica in sync, producers for `acks=all`. No
    /// test here loses a broker; the harness runs one.
    #[test]
    fn a_replicated_topic_needs_all_but_one_replica_in_sync() {
        let layout = |replication_factor| TopicLayout {
            partitions: 6,
            replication_factor,
        };
        assert_eq!(layout(3).min_insync_replicas(), 2);
        assert_eq!(layout(1).min_insync_replicas(), 1);
        let producer = producer_config(&config(Security::default()));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
    }

    /// What up.sh sets against tansu reaches librdkafka; nothing below one is taken.
    #[test]
    fn the_batch_size_setting_reaches_the_producer() {
        let env = |value: &str| {
            Env::from_vars(
                "ORDERS",
                [("ORDERS__KAFKA__BATCH_MAX_MESSAGES", value.to_string())],
            )
        };
        let one = BusConfig::from_env(&env("1")).unwrap();
        assert_eq!(producer_config(&one).get("batch.num.messages"), Some("1"));
        let default = BusConfig::from_env(&Env::from_vars("ORDERS", [("UNRELATED", "")])).unwrap();
        assert_eq!(
            producer_config(&default).get("batch.num.messages"),
            Some("10000")
        );
        let error = BusConfig::from_env(&env("0")).unwrap_err().to_string();
        assert!(
            error.contains("ORDERS__KAFKA__BATCH_MAX_MESSAGES"),
            "{error}"
        );
    }
}
