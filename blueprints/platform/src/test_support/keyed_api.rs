//! The API tests every keyed service shares: create, get, list, update and delete over
//! the service's real gRPC surface against its real database, with their idempotent
//! replays, ETags, outbox events and callers. A service implements [`KeyedApi`] for its
//! test fixture (its requests and calls) and instantiates the suite with
//! [`keyed_api_tests!`](crate::keyed_api_tests); what only it has (commands, references,
//! sagas) stays in its own tests.

use std::fmt::Debug;
use std::future::Future;

use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::in_process::InProcess;
use crate::service_auth::Minter;

/// Who a test client calls as: nobody, or a service holding its link key, on its own
/// behalf or an end user's (as the gateway calls).
#[derive(Clone)]
pub struct Caller {
    minter: Option<Minter>,
    user: Option<&'static str>,
}

impl Caller {
    /// No credential at all.
    pub fn anonymous() -> Caller {
        Caller {
            minter: None,
            user: None,
        }
    }

    /// A service calling on its own behalf.
    pub fn service(minter: Minter) -> Caller {
        Caller {
            minter: Some(minter),
            user: None,
        }
    }

    /// A service calling on behalf of an end user.
    pub fn on_behalf_of(minter: Minter, user: &'static str) -> Caller {
        Caller {
            minter: Some(minter),
            user: Some(user),
        }
    }
}

impl tonic::service::Interceptor for Caller {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(minter) = &self.minter {
            minter.authorize(&mut request, self.user);
        }
        Ok(request)
    }
}

/// What every resource of the API carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub id: String,
    pub version: i64,
    /// `created_at` as seconds and nanoseconds, if the resource has it.
    pub created_at: Option<(i64, i32)>,
}

/// The outbox as the console's outbox page reads it (`ListOutbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxListing {
    pub backlog: i64,
    /// How long the oldest waiting row has waited (0: none waits).
    pub oldest_age_ms: i64,
    pub parked_count: i64,
    /// The listed parked rows: (id, attempts, last error, payload bytes).
    pub parked: Vec<(String, i32, String, i64)>,
}

/// A service's keyed API as the shared tests drive it: its fixture, its requests and its
/// calls. `Client` is its generated gRPC client over a channel with a [`Caller`].
pub trait KeyedApi: Sized + Send + 'static {
    /// The resource as the API returns it.
    type Resource: Clone + PartialEq + Debug + Send + 'static;
    type Create: Clone + Send + 'static;
    type Update: Send + 'static;
    type Client: Clone + Send + 'static;

    /// The system and this service, as their link credentials name them.
    const SYSTEM: &'static str;
    const SERVICE: &'static str;
    /// The callers the spec lets call this one (the gateway among them).
    const CALLERS: &'static [&'static str];
    /// The aggregate's table, as SQL names it.
    const TABLE: &'static str;
    /// The fully qualified protobuf names of the updated and deleted events.
    const UPDATED: &'static str;
    const DELETED: &'static str;
    const CREATED: &'static str;
    /// The aggregate's name as the outbox rows carry it.
    const AGGREGATE: &'static str;

    /// Starts the service (and whatever it calls) on a fresh database. (Not `Send`: the
    /// tests await it on their own task.)
    fn spawn() -> impl Future<Output = Self>;
    fn served(&self) -> &InProcess;
    /// Stops everything [`spawn`](KeyedApi::spawn) started; the stop must succeed.
    fn finish(self) -> impl Future<Output = ()>;
    fn client(channel: Channel, caller: Caller) -> Self::Client;

    /// A valid create with the sample values.
    fn create_request(&self, key: &str) -> Self::Create;
    /// An update changing every field an update may change, conditional on `etag`.
    fn update_request(&self, id: &str, etag: &str, key: &str) -> Self::Update;
    /// Asserts that `created` holds what [`create_request`](KeyedApi::create_request) sent.
    fn assert_created_as_requested(&self, created: &Self::Resource);
    /// Asserts that `updated` holds every change [`update_request`](KeyedApi::update_request) makes.
    fn assert_updated_as_requested(&self, updated: &Self::Resource);
    fn header(resource: &Self::Resource) -> Header;
    /// The id and the resource a created event's payload carries.
    fn decode_created(payload: &[u8]) -> (String, Option<Self::Resource>);

    fn create(
        client: &mut Self::Client,
        request: Self::Create,
    ) -> impl Future<Output = Result<Self::Resource, Status>> + Send;
    fn get(
        client: &mut Self::Client,
        id: String,
    ) -> impl Future<Output = Result<Self::Resource, Status>> + Send;
    /// One page and the next page's token (empty after the last).
    fn list(
        client: &mut Self::Client,
        page_size: i32,
        page_token: String,
    ) -> impl Future<Output = Result<(Vec<Self::Resource>, String), Status>> + Send;
    fn update(
        client: &mut Self::Client,
        request: Self::Update,
    ) -> impl Future<Output = Result<Self::Resource, Status>> + Send;
    fn delete(
        client: &mut Self::Client,
        id: String,
        etag: String,
        key: String,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    fn list_outbox(
        client: &mut Self::Client,
        limit: i32,
    ) -> impl Future<Output = Result<OutboxListing, Status>> + Send;
    /// How many of `ids` were parked and now wait again.
    fn replay_parked(
        client: &mut Self::Client,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<i64, Status>> + Send;
}

/// The client the gateway would be: the gateway's link credential for this service.
pub fn gateway<A: KeyedApi>(app: &A) -> A::Client {
    A::client(
        app.served().channel.clone(),
        Caller::service(minter(app, "gateway")),
    )
}

/// A client with `caller`'s link credential (the in-process service gives every link the
/// same key), e.g. the console's.
pub fn caller<A: KeyedApi>(app: &A, caller: &str) -> A::Client {
    A::client(
        app.served().channel.clone(),
        Caller::service(minter(app, caller)),
    )
}

fn minter<A: KeyedApi>(app: &A, caller: &str) -> Minter {
    Minter::new(&app.served().key, A::SYSTEM, caller, A::SERVICE)
}

/// Creates one resource with the sample values, as the gateway; it must succeed.
pub async fn create<A: KeyedApi>(app: &A, key: &str) -> A::Resource {
    A::create(&mut gateway(app), app.create_request(key))
        .await
        .expect("create succeeds")
}

async fn count<A: KeyedApi>(app: &A, sql: &str) -> i64 {
    app.served().count(sql).await
}

async fn rows<A: KeyedApi>(app: &A) -> i64 {
    count(app, &format!("SELECT count(*) FROM {}", A::TABLE)).await
}

async fn events<A: KeyedApi>(app: &A, event_type: &str) -> i64 {
    count(
        app,
        &format!("SELECT count(*) FROM outbox WHERE event_type = '{event_type}'"),
    )
    .await
}

pub async fn create_then_get_returns_the_same_resource<A: KeyedApi>() {
    let app = A::spawn().await;
    let created = create(&app, "key-1").await;
    let header = A::header(&created);
    assert!(
        uuid::Uuid::parse_str(&header.id).is_ok(),
        "id is a UUID: {header:?}"
    );
    assert!(header.created_at.is_some());
    app.assert_created_as_requested(&created);
    let fetched = A::get(&mut gateway(&app), header.id).await.unwrap();
    assert_eq!(fetched, created);
    app.finish().await;
}

pub async fn list_pages_through_every_resource_in_creation_order<A: KeyedApi>() {
    let app = A::spawn().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(A::header(&create(&app, &format!("key-{i}")).await).id);
    }
    let mut client = gateway(&app);
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (page, next) = A::list(&mut client, 2, token).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|r| A::header(r).id));
        pages += 1;
        assert!(pages <= 5, "paging does not end");
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);
    app.finish().await;
}

pub async fn a_retry_with_the_same_key_returns_the_stored_result_and_creates_once<A: KeyedApi>() {
    let app = A::spawn().await;
    let first = create(&app, "retry-me").await;
    let second = create(&app, "retry-me").await;
    assert_eq!(second, first);
    assert_eq!(rows(&app).await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 1);
    app.finish().await;
}

pub async fn concurrent_duplicates_create_one_resource<A: KeyedApi>() {
    let app = A::spawn().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = gateway(&app);
        let request = app.create_request("same-key");
        tasks.spawn(async move {
            A::create(&mut client, request)
                .await
                .map(|r| A::header(&r).id)
        });
    }
    let ids: Vec<String> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every duplicate succeeds"))
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert_eq!(rows(&app).await, 1);
    app.finish().await;
}

pub async fn an_update_bumps_the_version_writes_its_event_and_replays_on_retry<A: KeyedApi>() {
    let app = A::spawn().await;
    let created = A::header(&create(&app, "key-u").await);
    assert_eq!(created.version, 1);
    let mut client = gateway(&app);
    let updated = A::update(
        &mut client,
        app.update_request(&created.id, "1", "change-1"),
    )
    .await
    .expect("update succeeds");
    assert_eq!(A::header(&updated).version, 2);
    assert_eq!(A::header(&updated).created_at, created.created_at);
    app.assert_updated_as_requested(&updated);
    // A retry with the same key (whose etag is stale by now) gets the first answer.
    let retried = A::update(
        &mut client,
        app.update_request(&created.id, "1", "change-1"),
    )
    .await
    .expect("a retry replays");
    assert_eq!(retried, updated);
    assert_eq!(events(&app, A::UPDATED).await, 1);
    let at_version_2 = "SELECT count(*) FROM outbox WHERE headers->>'aggregate_version' = '2'";
    assert_eq!(count(&app, at_version_2).await, 1);
    app.finish().await;
}

pub async fn a_stale_etag_is_aborted_and_changes_nothing<A: KeyedApi>() {
    let app = A::spawn().await;
    let created = A::header(&create(&app, "key-s").await);
    let mut client = gateway(&app);
    A::update(&mut client, app.update_request(&created.id, "1", "first"))
        .await
        .expect("first update succeeds");
    let stale = A::update(&mut client, app.update_request(&created.id, "1", "second"))
        .await
        .expect_err("a second update from version 1 is stale");
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert!(stale.message().contains("version 2"), "{}", stale.message());
    let version = format!("SELECT max(version) FROM {}", A::TABLE);
    assert_eq!(count(&app, &version).await, 2);
    let outbox = count(&app, "SELECT count(*) FROM outbox").await;
    assert_eq!(outbox, 2, "created and one update");
    app.finish().await;
}

pub async fn a_delete_is_idempotent_and_the_resource_is_gone<A: KeyedApi>() {
    let app = A::spawn().await;
    let id = A::header(&create(&app, "key-d").await).id;
    let delete = |etag: &'static str, key: &'static str| {
        let mut client = gateway(&app);
        let id = id.clone();
        async move { A::delete(&mut client, id, etag.into(), key.into()).await }
    };
    let stale = delete("7", "d0").await.expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);
    delete("1", "d1").await.expect("delete succeeds");
    delete("", "d2").await.expect("deleting again succeeds");
    let gone = A::get(&mut gateway(&app), id)
        .await
        .expect_err("a deleted resource is not found");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(events(&app, A::DELETED).await, 1);
    app.finish().await;
}

pub async fn create_writes_its_event_to_the_outbox_in_the_same_transaction<A: KeyedApi>() {
    let app = A::spawn().await;
    let created = create(&app, "key-outbox").await;
    let (event_type, aggregate_type, aggregate_id, payload, published): (
        String,
        String,
        uuid::Uuid,
        Vec<u8>,
        Option<i64>,
    ) = sqlx::query_as(
        "SELECT event_type, aggregate_type, aggregate_id, payload, \
         EXTRACT(EPOCH FROM published_at)::BIGINT FROM outbox",
    )
    .fetch_one(&app.served().pool)
    .await
    .expect("exactly one outbox row");
    assert_eq!(event_type, A::CREATED);
    assert_eq!(aggregate_type, A::AGGREGATE);
    assert_eq!(aggregate_id.to_string(), A::header(&created).id);
    assert_eq!(published, None, "not yet relayed");
    let (id, resource) = A::decode_created(&payload);
    assert_eq!(id, A::header(&created).id);
    assert_eq!(resource, Some(created));
    app.finish().await;
}

pub async fn bad_requests_get_precise_status_codes<A: KeyedApi>() {
    let app = A::spawn().await;
    let mut client = gateway(&app);
    let missing_key = A::create(&mut client, app.create_request("  "))
        .await
        .unwrap_err();
    assert_eq!(missing_key.code(), Code::InvalidArgument);
    assert!(
        missing_key.message().contains("idempotency_key"),
        "{missing_key:?}"
    );
    let unknown = A::get(&mut client, uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = A::get(&mut client, "42".into()).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    let bad_token = A::list(&mut client, 10, "not-a-token".into())
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 0);
    app.finish().await;
}

pub async fn only_callers_the_spec_admits_with_their_own_link_key_are_served<A: KeyedApi>() {
    let app = A::spawn().await;
    let channel = app.served().channel.clone();
    let mut anonymous = A::client(channel.clone(), Caller::anonymous());
    let no_credential = A::create(&mut anonymous, app.create_request("anonymous"))
        .await
        .unwrap_err();
    assert_eq!(no_credential.code(), Code::Unauthenticated);
    let get = |minter: Minter| {
        let mut client = A::client(channel.clone(), Caller::service(minter));
        async move {
            A::get(&mut client, uuid::Uuid::now_v7().to_string())
                .await
                .unwrap_err()
                .code()
        }
    };
    // The gateway's name under a key that is not the gateway link's: a forgery.
    let forged = Minter::new(&super::link_key(), A::SYSTEM, "gateway", A::SERVICE);
    assert_eq!(get(forged).await, Code::Unauthenticated);
    // The gateway's key, for another service's audience.
    let other_audience = Minter::new(&app.served().key, A::SYSTEM, "gateway", "another-service");
    assert_eq!(get(other_audience).await, Code::Unauthenticated);
    // A caller the spec does not let call this service, whatever its key.
    assert_eq!(
        get(minter(&app, "not-a-caller")).await,
        Code::PermissionDenied
    );
    // Every caller the spec admits, each with its link's key, is served; the console's
    // link only for the RPCs it reads with (`service_auth::CONSOLE_METHODS`).
    for caller in A::CALLERS {
        let served = if *caller == crate::service_auth::CONSOLE {
            Code::PermissionDenied
        } else {
            Code::NotFound
        };
        assert_eq!(get(minter(&app, caller)).await, served, "{caller}");
    }
    assert_eq!(rows(&app).await, 0);
    create(&app, "with-credential").await;
    app.finish().await;
}

pub async fn one_idempotency_key_from_two_users_is_two_keys<A: KeyedApi>() {
    let app = A::spawn().await;
    // The gateway's credential on behalf of an end user, as the gateway sends it.
    let create_as = |user: &'static str| {
        let caller = Caller::on_behalf_of(minter(&app, "gateway"), user);
        let mut client = A::client(app.served().channel.clone(), caller);
        let request = app.create_request("shared-key");
        async move {
            A::create(&mut client, request)
                .await
                .expect("create succeeds")
        }
    };
    let alice = create_as("alice").await;
    let bob = create_as("bob").await;
    assert_ne!(
        A::header(&alice).id,
        A::header(&bob).id,
        "bob's create is his own, not alice's stored answer"
    );
    // Each user's retry still gets their own first answer.
    assert_eq!(create_as("alice").await, alice);
    assert_eq!(create_as("bob").await, bob);
    assert_eq!(rows(&app).await, 2);
    // Without an end user, the calling service's scope is its own too.
    create(&app, "shared-key").await;
    assert_eq!(rows(&app).await, 3);
    app.finish().await;
}

/// Parks a row in the outbox as the relay does after the broker's refusals: returns its id.
async fn park_a_row<A: KeyedApi>(app: &A) -> String {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (id, topic, event_type, aggregate_type, aggregate_id, aggregate_version, \
         payload, attempts, last_error, parked_at) \
         VALUES ($1, 'a-topic', $2, $3, $4, 1, $5, 5, 'the broker refuses it: too large', now())",
    )
    .bind(id)
    .bind(A::CREATED)
    .bind(A::AGGREGATE)
    .bind(uuid::Uuid::now_v7())
    .bind(vec![0u8; 300])
    .execute(&app.served().pool)
    .await
    .expect("a parked row is written");
    id.to_string()
}

pub async fn the_console_lists_parked_outbox_rows_and_replays_them_for_an_operator<A: KeyedApi>() {
    let app = A::spawn().await;
    let parked = park_a_row(&app).await;
    let mut console = caller(&app, crate::service_auth::CONSOLE);
    let listed = A::list_outbox(&mut console, 50)
        .await
        .expect("the console lists");
    assert_eq!((listed.backlog, listed.oldest_age_ms), (0, 0), "{listed:?}");
    assert_eq!(listed.parked_count, 1, "{listed:?}");
    assert_eq!(
        listed.parked,
        [(
            parked.clone(),
            5,
            "the broker refuses it: too large".to_string(),
            300
        )]
    );
    // The page's RPC is the console's, and a replay is an operator's.
    let by_gateway = A::list_outbox(&mut gateway(&app), 50).await.unwrap_err();
    assert_eq!(by_gateway.code(), Code::PermissionDenied, "{by_gateway:?}");
    let unnamed = A::replay_parked(&mut console, vec![parked.clone()])
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::PermissionDenied, "{unnamed:?}");
    let gateway_user = A::client(
        app.served().channel.clone(),
        Caller::on_behalf_of(minter(&app, "gateway"), "token:ann"),
    );
    let by_gateway = A::replay_parked(&mut gateway_user.clone(), vec![parked.clone()])
        .await
        .unwrap_err();
    assert_eq!(by_gateway.code(), Code::PermissionDenied, "{by_gateway:?}");
    let mut operator = A::client(
        app.served().channel.clone(),
        Caller::on_behalf_of(minter(&app, crate::service_auth::CONSOLE), "token:ann"),
    );
    let bad = A::replay_parked(&mut operator, vec!["not-an-id".into()])
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    // Replayed: back in the relay's way with fresh attempts, once.
    assert_eq!(
        A::replay_parked(&mut operator, vec![parked.clone()])
            .await
            .unwrap(),
        1
    );
    let waiting = format!(
        "SELECT count(*) FROM outbox WHERE id = '{parked}' AND parked_at IS NULL AND attempts = 0"
    );
    assert_eq!(count(&app, &waiting).await, 1);
    assert_eq!(
        A::replay_parked(&mut operator, vec![parked.clone()])
            .await
            .unwrap(),
        0,
        "a row replayed already is left alone"
    );
    // It waits now (these tests run no relay), beside a row written 5 s ago, the oldest.
    sqlx::query(
        "INSERT INTO outbox (id, topic, event_type, aggregate_type, aggregate_id, payload, created_at) \
         VALUES ($1, 'a-topic', $2, $3, $4, '', now() - interval '5 seconds')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(A::CREATED)
    .bind(A::AGGREGATE)
    .bind(uuid::Uuid::now_v7())
    .execute(&app.served().pool)
    .await
    .expect("a waiting row is written");
    let listed = A::list_outbox(&mut console, 50).await.unwrap();
    assert_eq!((listed.parked_count, listed.backlog), (0, 2), "{listed:?}");
    assert!(
        (5_000..60_000).contains(&listed.oldest_age_ms),
        "the oldest waited 5 s: {listed:?}"
    );
    app.finish().await;
}

/// The shared keyed API tests as `#[tokio::test]`s of the calling test crate, over its
/// [`KeyedApi`] fixture.
#[macro_export]
macro_rules! keyed_api_tests {
    ($api:ty) => {
        $crate::keyed_api_tests!($api:
            create_then_get_returns_the_same_resource,
            list_pages_through_every_resource_in_creation_order,
            a_retry_with_the_same_key_returns_the_stored_result_and_creates_once,
            concurrent_duplicates_create_one_resource,
            an_update_bumps_the_version_writes_its_event_and_replays_on_retry,
            a_stale_etag_is_aborted_and_changes_nothing,
            a_delete_is_idempotent_and_the_resource_is_gone,
            create_writes_its_event_to_the_outbox_in_the_same_transaction,
            bad_requests_get_precise_status_codes,
            only_callers_the_spec_admits_with_their_own_link_key_are_served,
            one_idempotency_key_from_two_users_is_two_keys,
            the_console_lists_parked_outbox_rows_and_replays_them_for_an_operator
        );
    };
    ($api:ty: $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $crate::test_support::keyed_api::$test::<$api>().await;
            }
        )+
    };
}
