//! SQS adapter on aws-sdk-sqs, with a configurable endpoint (an emulator such as moto
//! locally, AWS in production). SQS has no fan-out, so each consuming service owns one
//! queue (`<system>-<consumer>.fifo`) and a dead-letter queue
//! (`<system>-<consumer>-dead-letter.fifo`), and the publisher sends a topic's message to
//! the queue of every service that subscribes to it: the routes are generated from the spec
//! (`topics::ROUTES`). The queues are FIFO with the aggregate id as message group, so one
//! aggregate's events arrive in the order they were sent, and the event id as
//! deduplication id. The payload travels base64-encoded in the body, the headers as
//! message attributes. Queues are created on demand, and again after the endpoint came
//! back empty.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::bus::{
    BusError, Delivery, EVENT_ID, OutgoingMessage, PollGate, Publisher, Receipt, Subscriber,
};
use crate::config::{ConfigError, Env};

/// Header that carries the logical topic, since a queue receives several.
const TOPIC_ATTRIBUTE: &str = "topic";
/// Long-poll duration of a receive: up to this long an empty queue costs one request.
/// Short enough that a stopping consumer can wait for the poll in flight (see
/// [`STOP_GRACE`]) within the process's 10 s for its background tasks.
const RECEIVE_WAIT_SECS: i32 = 5;
/// How long a stopping consumer lets a long poll in flight finish, so the messages it
/// brings are handed back rather than hidden for the visibility timeout (60 s).
pub const STOP_GRACE: Duration = Duration::from_secs(RECEIVE_WAIT_SECS as u64 + 2);
/// A receive must be allowed to outlive its long poll: a request abandoned by the client
/// while the endpoint hands it messages would hide them for the visibility timeout.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(RECEIVE_WAIT_SECS as u64 + 10);

#[derive(Clone, Debug)]
pub struct BusConfig {
    /// e.g. `http://127.0.0.1:5000` for moto; `None` uses the region's AWS endpoint.
    pub endpoint: Option<String>,
    pub region: String,
    pub publish_timeout: Duration,
    /// Logical topic → the queues its messages go to.
    pub routes: Vec<(String, Vec<String>)>,
}

impl BusConfig {
    /// `<SERVICE>__SQS__ENDPOINT`, `<SERVICE>__SQS__REGION` (default `us-east-1`) and
    /// `<SERVICE>__SQS__PUBLISH_TIMEOUT_MS`. Credentials are not configuration: they come
    /// from the AWS default chain (see [`Bus::connect`]).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let endpoint = env.parse_or("SQS__ENDPOINT", String::new())?;
        Ok(BusConfig {
            endpoint: (!endpoint.is_empty()).then_some(endpoint),
            region: env.parse_or("SQS__REGION", "us-east-1".to_string())?,
            publish_timeout: Duration::from_millis(env.parse_or("SQS__PUBLISH_TIMEOUT_MS", 5000)?),
            routes: Vec::new(),
        })
    }

    pub fn with_routes(mut self, routes: &[(&str, &[&str])]) -> Self {
        self.routes = routes
            .iter()
            .map(|(topic, queues)| {
                (
                    topic.to_string(),
                    queues.iter().map(|q| q.to_string()).collect(),
                )
            })
            .collect();
        self
    }

    fn queues(&self, topic: &str) -> &[String] {
        self.routes
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(&[], |(_, queues)| queues.as_slice())
    }
}

fn error(e: impl std::fmt::Display) -> BusError {
    BusError::new(e.to_string())
}

/// Whether any AWS credential setting is present for the default chain to use.
fn credentials_configured(is_set: impl Fn(&str) -> bool) -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|name| is_set(name))
}

/// Whether GetQueueUrl said the queue does not exist (JSON and query-compatible codes).
fn queue_does_not_exist<R>(
    e: &aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError, R>,
) -> bool {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
    match e.as_service_error() {
        Some(GetQueueUrlError::QueueDoesNotExist(_)) => true,
        Some(other) => matches!(
            other.code(),
            Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue")
        ),
        None => false,
    }
}

/// Whether SQS refused the message itself: larger than the queue's maximum message size
/// (`MaximumMessageSize`), or with contents or attributes it does not accept. Sending it
/// again cannot succeed.
fn is_rejection<R>(
    e: &aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::send_message::SendMessageError, R>,
) -> bool {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    use aws_sdk_sqs::operation::send_message::SendMessageError;
    match e.as_service_error() {
        Some(SendMessageError::InvalidMessageContents(_)) => true,
        Some(other) => matches!(
            other.code(),
            Some("InvalidParameterValue" | "InvalidAttributeValue" | "InvalidAttributeName")
        ),
        None => false,
    }
}

#[derive(Clone)]
pub struct Bus {
    config: BusConfig,
    client: aws_sdk_sqs::Client,
    /// Queue name → URL, filled as queues are created.
    urls: Arc<Mutex<HashMap<String, String>>>,
    /// Queue name → its `MaximumMessageSize`, read with its URL: a larger message is
    /// refused here instead of being uploaded for SQS to refuse.
    max_sizes: Arc<Mutex<HashMap<String, usize>>>,
}

impl Bus {
    /// Creates the client; nothing connects until the first call, so a service starts (and
    /// accepts writes) while the endpoint is down.
    ///
    /// Credentials come from the AWS SDK's default chain, as on any AWS workload:
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a profile (`AWS_PROFILE`,
    /// `AWS_SHARED_CREDENTIALS_FILE`), web identity (EKS service accounts), the ECS
    /// container endpoint, then EC2 instance metadata; resolved on first use and refreshed
    /// before they expire. Only with an endpoint override (an emulator) and none of
    /// those settings present are fixed dummy keys used, since emulators accept any.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(config.publish_timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
            if !credentials_configured(|name| std::env::var_os(name).is_some()) {
                loader = loader.credentials_provider(Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "archscaffold-emulator",
                ));
            }
        }
        let shared = loader.load().await;
        Ok(Bus {
            config: config.clone(),
            client: aws_sdk_sqs::Client::new(&shared),
            urls: Arc::default(),
            max_sizes: Arc::default(),
        })
    }

    async fn queue_url(&self, queue: &str) -> Result<String, BusError> {
        if let Some(url) = self.urls.lock().expect("not poisoned").get(queue) {
            return Ok(url.clone());
        }
        // A queue made elsewhere (Terraform, with its own attributes) is used as it is:
        // CreateQueue would refuse a name that exists with other attributes.
        let found = match self.client.get_queue_url().queue_name(queue).send().await {
            Ok(found) => found.queue_url().map(str::to_string),
            Err(e) if queue_does_not_exist(&e) => None,
            Err(e) => return Err(error(aws_sdk_sqs::error::DisplayErrorContext(e))),
        };
        let url = match found {
            Some(url) => url,
            None => self.create_queue(queue).await?,
        };
        self.urls
            .lock()
            .expect("not poisoned")
            .insert(queue.to_string(), url.clone());
        let limit = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .ok()
            .and_then(|a| {
                a.attributes()?
                    .get(&QueueAttributeName::MaximumMessageSize)?
                    .parse()
                    .ok()
            });
        if let Some(limit) = limit {
            self.max_sizes
                .lock()
                .expect("not poisoned")
                .insert(queue.to_string(), limit);
        }
        Ok(url)
    }

    /// Creates `queue` as this service needs it and returns its URL.
    async fn create_queue(&self, queue: &str) -> Result<String, BusError> {
        let mut create = self
            .client
            .create_queue()
            .queue_name(queue)
            // Longer than a message's retries with backoff take, so it is not redelivered
            // to this consumer while still being worked on.
            .attributes(QueueAttributeName::VisibilityTimeout, "60");
        if queue.ends_with(".fifo") {
            create = create.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let created = create
            .send()
            .await
            .map_err(|e| error(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(created
            .queue_url()
            .ok_or_else(|| BusError::new(format!("no URL for queue {queue}")))?
            .to_string())
    }

    /// A subscriber on the queue that `topics` route to (one queue per consuming service).
    /// The queue a consumer of `topics` receives from.
    fn consumer_queue(&self, topics: &[String]) -> Result<String, BusError> {
        topics
            .iter()
            .flat_map(|t| self.config.queues(t))
            .next()
            .cloned()
            .ok_or_else(|| BusError::new(format!("no queue is routed from {topics:?}")))
    }

    /// Measures how far the consumer of `topics` is behind: the messages waiting in its
    /// queue (SQS's approximate count of visible messages).
    pub fn lag_probe(&self, _group: &str, topics: &[String]) -> Result<LagProbe, BusError> {
        Ok(LagProbe {
            bus: self.clone(),
            queue: self.consumer_queue(topics)?,
        })
    }

    pub fn subscriber(&self, _group: &str, topics: &[String]) -> Result<SqsSubscriber, BusError> {
        let queue = self.consumer_queue(topics)?;
        Ok(SqsSubscriber {
            bus: self.clone(),
            queue,
            buffered: VecDeque::new(),
            gate: PollGate::default(),
        })
    }
}

impl Publisher for Bus {
    async fn publish(&self, message: &OutgoingMessage) -> Result<(), BusError> {
        let mut attributes = HashMap::new();
        for (key, value) in message.headers.iter().chain(std::iter::once((
            &TOPIC_ATTRIBUTE.to_string(),
            &message.topic,
        ))) {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(error)?;
            attributes.insert(key.clone(), value);
        }
        let body = BASE64.encode(&message.payload);
        // What SQS counts against a queue's maximum: the body and each attribute's name,
        // type and value.
        let size = body.len()
            + attributes
                .iter()
                .map(|(name, value)| {
                    name.len() + value.data_type().len() + value.string_value().map_or(0, str::len)
                })
                .sum::<usize>();
        // A topic nobody subscribes to routes nowhere: SQS has no topic to keep it in.
        for queue in self.config.queues(&message.topic) {
            let url = self.queue_url(queue).await?;
            let limit = self
                .max_sizes
                .lock()
                .expect("not poisoned")
                .get(queue)
                .copied();
            if let Some(limit) = limit.filter(|limit| size > *limit) {
                return Err(BusError::rejected(format!(
                    "a message of {size} bytes is larger than queue {queue} accepts ({limit} bytes)"
                )));
            }
            let mut send = self
                .client
                .send_message()
                .queue_url(&url)
                .message_body(&body)
                .set_message_attributes(Some(attributes.clone()));
            if queue.ends_with(".fifo") {
                // One group per aggregate: ordered within it, parallel across them.
                let group = if message.key.is_empty() {
                    &message.topic
                } else {
                    &message.key
                };
                let dedup = message
                    .headers
                    .get(EVENT_ID)
                    .cloned()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                send = send.message_group_id(group).message_deduplication_id(dedup);
            }
            let sent = send.send().await;
            if let Err(e) = sent {
                if is_rejection(&e) {
                    return Err(BusError::rejected(
                        aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                    ));
                }
                // The queue may have gone with the endpoint: look it up again next time.
                self.urls.lock().expect("not poisoned").remove(queue);
                return Err(error(aws_sdk_sqs::error::DisplayErrorContext(e)));
            }
        }
        Ok(())
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BusError> {
        self.urls.lock().expect("not poisoned").clear();
        for topic in topics {
            for queue in self.config.queues(topic) {
                self.queue_url(queue).await?;
            }
        }
        Ok(())
    }
}

/// See [`Bus::lag_probe`].
#[derive(Clone)]
pub struct LagProbe {
    bus: Bus,
    queue: String,
}

impl LagProbe {
    pub async fn lag(&self) -> Result<u64, BusError> {
        let url = self.bus.queue_url(&self.queue).await?;
        let attributes = self
            .bus
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| error(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        attributes
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| BusError::new(format!("{} reported no message count", self.queue)))
    }
}

/// The subscriber type of this bus, named the same for every adapter.
pub type BusSubscriber = SqsSubscriber;

pub struct SqsSubscriber {
    bus: Bus,
    queue: String,
    buffered: VecDeque<Delivery>,
    /// Closed on stop: the long poll in flight ends, no other starts.
    gate: PollGate,
}

impl Subscriber for SqsSubscriber {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if let Some(delivery) = self.buffered.pop_front() {
                return Ok(delivery);
            }
            // A long poll started now and abandoned at exit would go on at SQS for its
            // wait time and take messages for nobody, hidden for the visibility timeout.
            if self.gate.is_closed() {
                return Err(BusError::new("stopping: no further receive"));
            }
            let url = self.bus.queue_url(&self.queue).await?;
            let received = self
                .bus
                .client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(RECEIVE_WAIT_SECS)
                .message_attribute_names("All")
                .customize()
                .config_override(
                    aws_sdk_sqs::config::Config::builder().timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(RECEIVE_TIMEOUT)
                            .build(),
                    ),
                )
                .send()
                .await
                .map_err(|e| {
                    self.bus
                        .urls
                        .lock()
                        .expect("not poisoned")
                        .remove(&self.queue);
                    error(aws_sdk_sqs::error::DisplayErrorContext(e))
                })?;
            for message in received.messages() {
                let mut headers: BTreeMap<String, String> = message
                    .message_attributes()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())))
                    .collect();
                let topic = headers.remove(TOPIC_ATTRIBUTE).unwrap_or_default();
                // A body that is not base64 is passed on as raw bytes: the handler then
                // fails to decode it and the message is dead-lettered.
                let body = message.body().unwrap_or_default();
                let payload = BASE64
                    .decode(body)
                    .unwrap_or_else(|_| body.as_bytes().to_vec());
                self.buffered.push_back(Delivery {
                    topic,
                    key: String::new(),
                    payload,
                    headers,
                    receipt: Receipt {
                        handle: message.receipt_handle().unwrap_or_default().to_string(),
                        ..Receipt::default()
                    },
                });
            }
        }
    }

    fn poll_gate(&self) -> PollGate {
        self.gate.clone()
    }

    async fn release(&mut self, unprocessed: Vec<Delivery>) {
        let handed_back: Vec<Delivery> = unprocessed
            .into_iter()
            .chain(self.buffered.drain(..))
            .collect();
        if handed_back.is_empty() {
            return;
        }
        let Ok(url) = self.bus.queue_url(&self.queue).await else {
            return;
        };
        for delivery in &handed_back {
            // Visible again at once: the next receive, of any consumer, gets it.
            let released = self
                .bus
                .client
                .change_message_visibility()
                .queue_url(&url)
                .receipt_handle(&delivery.receipt.handle)
                .visibility_timeout(0)
                .send()
                .await;
            if let Err(e) = released {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(e), "cannot hand a message back; it reappears after the visibility timeout");
            }
        }
        tracing::info!(messages = handed_back.len(), queue = %self.queue, "handed unprocessed messages back");
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        let url = self.bus.queue_url(&self.queue).await?;
        self.bus
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(&delivery.receipt.handle)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error(aws_sdk_sqs::error::DisplayErrorContext(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keys_are_needed_to_configure_the_bus_for_aws() {
        // On Kubernetes the pod's identity provides credentials: configuration must not
        // insist on AWS_ACCESS_KEY_ID (it did, unless an emulator endpoint was set).
        let config = BusConfig::from_env(&Env::new("ARCHSCAFFOLD_SQS_CONFIG_TEST")).unwrap();
        assert_eq!(
            (config.endpoint, config.region.as_str()),
            (None, "us-east-1")
        );
    }

    #[test]
    fn any_credential_setting_goes_to_the_default_chain() {
        assert!(
            !credentials_configured(|_| false),
            "nothing set: emulator keys"
        );
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ] {
            assert!(credentials_configured(|set| set == name), "{name}");
        }
    }

    #[tokio::test]
    async fn a_client_is_built_without_reaching_aws() {
        // Credentials resolve lazily, on the first call: a service starts while the
        // credential source (or the endpoint) is unreachable.
        let config = BusConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "eu-west-1".into(),
            publish_timeout: Duration::from_millis(200),
            routes: Vec::new(),
        };
        let bus = tokio::time::timeout(Duration::from_secs(5), Bus::connect(&config))
            .await
            .expect("connect does not wait for the network")
            .unwrap();
        assert_eq!(
            bus.client.config().region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
    }
}
