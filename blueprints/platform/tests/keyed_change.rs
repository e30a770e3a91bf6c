//! The keyed use cases (`platform::keyed_change`) against a real PostgreSQL
//! (`DATABASE_URL`, a fresh database per test with the platform's tables), over a small
//! aggregate of this test's own: concurrent changes, retries racing their original, a key
//! taken mid-change, and a change failing with its event. Each generated service's API
//! tests run the same machinery over its own aggregate and SQL.

use std::sync::LazyLock;

use platform::context::MessageContext;
use platform::error::AppError;
use platform::keyed_change::{self, Change, Create, KeyedStore, Outcome, ResponseCodec, Write};
use platform::outbox::{OutboxMessage, Subject};
use platform::table::{PgQuery, Sql, Statements, Table};
use platform::test_support::{TestDatabase, platform_database};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use uuid::Uuid;

/// The aggregate of these tests: a row with a version and a state.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    id: Uuid,
    version: i64,
    state: String,
}

/// The event a change records: the item's id and version after it, and its name.
type ItemEvent = (Uuid, i64, &'static str);

impl ResponseCodec for Item {
    fn encode_response(&self) -> Vec<u8> {
        format!("{} {} {}", self.id, self.version, self.state).into_bytes()
    }

    fn decode_response(stored: &[u8]) -> Result<Self, String> {
        let text = String::from_utf8(stored.to_vec()).map_err(|e| e.to_string())?;
        let mut parts = text.split(' ');
        let mut next = || parts.next().ok_or("a part is missing");
        Ok(Item {
            id: next()?.parse().map_err(|e: uuid::Error| e.to_string())?,
            version: next()?
                .parse()
                .map_err(|e: std::num::ParseIntError| e.to_string())?,
            state: next()?.to_string(),
        })
    }
}

static STATEMENTS: LazyLock<Statements> = LazyLock::new(|| {
    Statements::new(&Sql {
        table: "items",
        columns: "id, version, state",
        insert_into: "INSERT INTO items (id, version, state)",
        row_values: "$1, $2, $3",
        row_parameters: 3,
        update_row: "UPDATE items SET version = $3, state = $4 WHERE id = $1 AND version = $2 \
                     AND (cardinality($5::text[]) = 0 OR state = ANY($5))",
        update_parameters: 5,
    })
});

impl Table for Item {
    type Id = Uuid;

    fn statements() -> &'static Statements {
        &STATEMENTS
    }

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn bind_row<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query.bind(self.id).bind(self.version).bind(&self.state)
    }

    fn bind_update<'q>(
        &'q self,
        query: PgQuery<'q>,
        expected: i64,
        from: &'q [&'q str],
    ) -> PgQuery<'q> {
        query
            .bind(self.id)
            .bind(expected)
            .bind(self.version)
            .bind(&self.state)
            .bind(from)
    }

    fn from_row(row: &PgRow) -> Result<Item, sqlx::Error> {
        Ok(Item {
            id: row.try_get("id")?,
            version: row.try_get("version")?,
            state: row.try_get("state")?,
        })
    }
}

impl KeyedStore for Item {
    const NAME: &'static str = "Item";

    fn parse_id(id: &str) -> Result<Uuid, AppError> {
        id.parse()
            .map_err(|_| AppError::InvalidArgument(format!("`{id}` is not an item id")))
    }

    fn version(&self) -> i64 {
        self.version
    }
}

fn outbox_message(event: &ItemEvent, context: &MessageContext) -> OutboxMessage {
    let (id, version, name) = *event;
    let subject = Subject {
        aggregate_type: "Item",
        id,
        version,
    };
    OutboxMessage::event(context, subject, "test.items", name, Vec::new())
}

async fn setup() -> (TestDatabase, PgPool) {
    let (db, pool) = platform_database("platform_keyed").await;
    sqlx::query(
        "CREATE TABLE items (id UUID PRIMARY KEY, version BIGINT NOT NULL, state TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    (db, pool)
}

async fn finish(db: TestDatabase, pool: PgPool) {
    pool.close().await;
    db.drop_database().await;
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A new item at version 1.
async fn item(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO items (id, version, state) VALUES ($1, 1, 'new')")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    id
}

/// Creates an item in `state` with `key`; the request's fingerprint is its state.
async fn create_item(pool: &PgPool, key: &str, state: &str) -> Result<Item, AppError> {
    let mut conn = pool.acquire().await?;
    let context = MessageContext::new_root();
    let create = Create {
        operation: "CreateItem",
        idempotency_key: key,
        fingerprint: state.as_bytes(),
        context: &context,
    };
    let decide = || {
        let item = Item {
            id: Uuid::now_v7(),
            version: 1,
            state: state.to_string(),
        };
        let event = (item.id, 1, "ItemCreated");
        Ok((item, event))
    };
    keyed_change::create(&mut conn, create, decide, outbox_message).await
}

/// Moves the item to `state` as `principal`, with `key` and, unless empty, `etag`; the
/// request's fingerprint is its state.
async fn set_state(
    pool: &PgPool,
    id: Uuid,
    etag: &str,
    key: &str,
    state: &str,
) -> Result<Option<Item>, AppError> {
    let mut conn = pool.acquire().await?;
    let id = id.to_string();
    let context = MessageContext::new_root();
    let written = Notify::new();
    let write = Write {
        operation: "SetState",
        change: Change {
            id: &id,
            etag,
            idempotency_key: key,
            fingerprint: state.as_bytes(),
        },
        context: &context,
        from: &[],
        removes: false,
        outbox_written: &written,
    };
    keyed_change::change(
        &mut conn,
        write,
        |current: &Item| {
            let next = Item {
                version: current.version + 1,
                state: state.to_string(),
                ..current.clone()
            };
            let event = (next.id, next.version, "ItemChanged");
            Ok(Outcome::Store(next, event))
        },
        outbox_message,
    )
    .await
}

#[tokio::test]
async fn of_two_concurrent_changes_with_the_same_etag_exactly_one_wins() {
    let (db, pool) = setup().await;
    for round in 0..5 {
        let id = item(&pool).await;
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let (first, second) = tokio::join!(
            set_state(&pool, id, "1", &a, "a"),
            set_state(&pool, id, "1", &b, "b"),
        );
        let wins = [&first, &second].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {first:?} / {second:?}");
        let lost = first.err().or(second.err()).unwrap();
        assert!(matches!(lost, AppError::Stale(_)), "{lost:?}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM items WHERE version = 2").await,
        5
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 5);
    finish(db, pool).await;
}

/// Three at once: each loses at most to the two others, so the three attempts suffice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_etag_a_change_lost_to_another_is_decided_again() {
    let (db, pool) = setup().await;
    for round in 0..5 {
        let id = item(&pool).await;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..3 {
            let pool = pool.clone();
            tasks.spawn(
                async move { set_state(&pool, id, "", &format!("k{round}-{n}"), "s").await },
            );
        }
        let mut versions: Vec<i64> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|r| r.expect("every change is applied").unwrap().version)
            .collect();
        versions.sort();
        assert_eq!(versions, [2, 3, 4], "round {round}: one after the other");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 15);
    finish(db, pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_change_change_it_once_and_answer_alike() {
    let (db, pool) = setup().await;
    let id = item(&pool).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.spawn(async move { set_state(&pool, id, "1", "same-change", "done").await });
    }
    let answers: Vec<Item> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every retry succeeds").expect("with the item"))
        .collect();
    assert!(
        answers.iter().all(|a| a == &answers[0] && a.version == 2),
        "{answers:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    finish(db, pool).await;
}

#[tokio::test]
async fn a_retry_replays_the_answer_and_a_reused_key_is_refused() {
    let (db, pool) = setup().await;
    let id = item(&pool).await;
    let first = set_state(&pool, id, "", "k", "a").await.unwrap();
    let retry = set_state(&pool, id, "", "k", "a").await.unwrap();
    assert_eq!(retry, first, "the stored answer, not a second change");
    let reused = set_state(&pool, id, "", "k", "b").await.unwrap_err();
    assert!(matches!(reused, AppError::Conflict(_)), "{reused:?}");
    let missing = set_state(&pool, Uuid::now_v7(), "", "k2", "a")
        .await
        .unwrap_err();
    assert!(matches!(missing, AppError::NotFound(_)), "{missing:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    finish(db, pool).await;
}

#[tokio::test]
async fn a_key_taken_while_a_change_is_written_rolls_the_whole_change_back() {
    let (db, pool) = setup().await;
    let id = item(&pool).await;
    let scope = MessageContext::new_root().principal;
    // Another request takes the key after the change has read (no key yet) and before its
    // write commits: the change's statement waits on the key, then fails whole.
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (operation, scope, key, request_sha256, response) \
         VALUES ('SetState', $1, 'taken', '\\x00', '')",
    )
    .bind(&scope)
    .execute(&mut *other)
    .await
    .unwrap();
    let change = tokio::spawn({
        let pool = pool.clone();
        async move { set_state(&pool, id, "1", "taken", "a").await }
    });
    let mut waiting = false;
    for _ in 0..200 {
        waiting = count(
            &pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            > 0;
        if waiting {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(waiting, "the change never waited on the key");
    other.commit().await.unwrap();
    let refused = change
        .await
        .unwrap()
        .expect_err("the key belongs to another request");
    assert!(matches!(refused, AppError::Conflict(_)), "{refused:?}");
    assert_eq!(
        count(&pool, "SELECT max(version) FROM items").await,
        1,
        "the row rolled back"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbox").await,
        0,
        "no event"
    );
    finish(db, pool).await;
}

#[tokio::test]
async fn a_change_and_its_outbox_row_roll_back_together() {
    let (db, pool) = setup().await;
    let id = item(&pool).await;
    // Fault injection: the outbox insert of the change fails inside its statement.
    sqlx::query(
        "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'injected outbox failure'; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER refuse_event BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_event()")
        .execute(&pool)
        .await
        .unwrap();
    let failed = set_state(&pool, id, "1", "doomed", "a")
        .await
        .expect_err("the change fails with its outbox insert");
    assert!(matches!(failed, AppError::Database(_)), "{failed:?}");
    assert_eq!(
        count(&pool, "SELECT max(version) FROM items").await,
        1,
        "the row rolled back"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM idempotency_keys WHERE key = 'doomed'"
        )
        .await,
        0
    );
    sqlx::query("DROP TRIGGER refuse_event ON outbox")
        .execute(&pool)
        .await
        .unwrap();
    // The same key now does the work: nothing of the failed attempt was kept.
    let changed = set_state(&pool, id, "1", "doomed", "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.version, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    finish(db, pool).await;
}

/// The reads and conditional writes `platform::table` provides over a service's SQL, for
/// the use cases it adds: the statements derived from `Sql` (select, list, delete) and its
/// own (insert, update) with their binds.
#[tokio::test]
async fn the_tables_reads_and_conditional_writes() {
    let (db, pool) = setup().await;
    let mut conn = pool.acquire().await.unwrap();
    let mut items = Vec::new();
    for _ in 0..3 {
        let item = Item {
            id: Uuid::now_v7(),
            version: 1,
            state: "new".to_string(),
        };
        item.insert(&mut conn).await.expect("insert");
        items.push(item);
    }
    assert_eq!(
        Item::find(&pool, items[1].id).await.unwrap().as_ref(),
        Some(&items[1])
    );
    assert_eq!(Item::find(&pool, Uuid::now_v7()).await.unwrap(), None);
    // Listing: oldest first, after a cursor, at most `limit`.
    assert_eq!(Item::list(&pool, None, 2).await.unwrap(), items[..2]);
    assert_eq!(
        Item::list(&pool, Some(items[0].id), 5).await.unwrap(),
        items[1..]
    );

    let next = Item {
        version: 2,
        state: "done".to_string(),
        ..items[0].clone()
    };
    // Only from the version it was decided on, and from one of the states it names.
    assert!(!next.update_if(&mut conn, 2, &[]).await.unwrap(), "stale");
    assert!(
        !next.update_if(&mut conn, 1, &["done"]).await.unwrap(),
        "not from new"
    );
    assert!(next.update_if(&mut conn, 1, &["new"]).await.unwrap());
    assert_eq!(
        Item::find_in(&mut conn, next.id).await.unwrap(),
        Some(next.clone())
    );
    assert!(
        !Item::delete_if(&mut conn, next.id, 1).await.unwrap(),
        "stale"
    );
    assert!(Item::delete_if(&mut conn, next.id, 2).await.unwrap());
    assert_eq!(Item::find_in(&mut conn, next.id).await.unwrap(), None);
    assert_eq!(count(&pool, "SELECT count(*) FROM items").await, 2);
    drop(conn);
    finish(db, pool).await;
}

#[tokio::test]
async fn a_create_writes_its_row_event_and_key_once_per_key() {
    let (db, pool) = setup().await;
    let first = create_item(&pool, "c1", "a").await.unwrap();
    let retry = create_item(&pool, "c1", "a").await.unwrap();
    assert_eq!(retry, first, "a retry gets the first answer");
    let reused = create_item(&pool, "c1", "b").await.unwrap_err();
    assert!(matches!(reused, AppError::Conflict(_)), "{reused:?}");
    let blank = create_item(&pool, "  ", "a").await.unwrap_err();
    assert!(matches!(blank, AppError::InvalidArgument(_)), "{blank:?}");
    assert_eq!(Item::find(&pool, first.id).await.unwrap(), Some(first));
    assert_eq!(count(&pool, "SELECT count(*) FROM items").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE event_type = 'ItemCreated' \
             AND aggregate_version = 1 AND headers->>'aggregate_version' = '1'"
        )
        .await,
        1
    );
    finish(db, pool).await;
}
