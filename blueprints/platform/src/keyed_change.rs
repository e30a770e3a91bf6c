//! The use cases every aggregate shares, generic over its store ([`KeyedStore`]): a change
//! (update, delete, command) read, decided and written with its outbox event and its
//! idempotency key in two statements (`crate::keyed_write`), the replay of a retried
//! request, ETags, and paging. A service supplies what differs: its rows' SQL, the
//! decision (`decide`, from its domain rules), its events' outbox rows and the response
//! codec.

use std::future::Future;

use sqlx::{PgConnection, Row};
use tokio::sync::Notify;

use crate::context::MessageContext;
use crate::error::AppError;
use crate::idempotency::{self, Claim};
use crate::keyed_write::{self, Key, KeyClaim};
use crate::outbox::OutboxMessage;
use crate::table::Table;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 200;
/// Attempts of a change without an ETag when concurrent changes keep winning the row.
pub const CHANGE_ATTEMPTS: u32 = 3;

/// What every change names: the aggregate, the version the caller saw (`etag`, empty for
/// an unconditional change) and the idempotency key with the request's fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub id: &'a str,
    pub etag: &'a str,
    pub idempotency_key: &'a str,
    pub fingerprint: &'a [u8],
}

/// What a decided change does to the row, with the event it records.
pub enum Outcome<A, E> {
    Store(A, E),
    Remove(E),
}

/// One page of a listing, with the token of the next page if there is one.
#[derive(Debug)]
pub struct Page<A> {
    pub items: Vec<A>,
    pub next_page_token: Option<String>,
}

/// How the answer to a keyed request is stored for its retries, and read back. The
/// use-case layer names the codec; the transport adapter implements it.
pub trait ResponseCodec: Sized {
    fn encode_response(&self) -> Vec<u8>;
    fn decode_response(stored: &[u8]) -> Result<Self, String>;
}

/// An aggregate's rows as the keyed use cases read and write them: each change in one
/// statement (`crate::keyed_write`) over the aggregate's [`Table`].
pub trait KeyedStore: Table + ResponseCodec {
    /// The aggregate's name in messages, e.g. `Order`.
    const NAME: &'static str;

    fn parse_id(id: &str) -> Result<Self::Id, AppError>;

    fn version(&self) -> i64;

    /// The row a change is decided from, and what an earlier request with the change's key
    /// stored, in one statement.
    fn find_keyed(
        conn: &mut PgConnection,
        id: Self::Id,
        key: &Key<'_>,
    ) -> impl Future<Output = Result<(Option<Claim>, Option<Self>), sqlx::Error>> + Send {
        async move {
            let query = sqlx::query(Self::statements().select_keyed()).bind(Self::uuid(id));
            let row = keyed_write::bind_lookup(query, key).fetch_one(conn).await?;
            let earlier = keyed_write::earlier(&row, key)?;
            let found: Option<uuid::Uuid> = row.try_get("id")?;
            let current = found.map(|_| Self::from_row(&row)).transpose()?;
            Ok((earlier, current))
        }
    }

    /// Stores `next` if the row is still at `expected` (and in one of `from`, if any), with
    /// its event and key: `false`, and nothing written, when the row moved on. A key
    /// claimed concurrently fails the statement (`keyed_write::key_taken`).
    fn update_keyed(
        conn: &mut PgConnection,
        next: &Self,
        expected: i64,
        from: &[&str],
        claim: &KeyClaim<'_>,
        event: &OutboxMessage,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async move {
            let query = next.bind_update(
                sqlx::query(Self::statements().update_keyed()),
                expected,
                from,
            );
            keyed_write::write(conn, query, claim, event).await
        }
    }

    /// Deletes the row if it is still at `expected`, with its event and key.
    fn delete_keyed(
        conn: &mut PgConnection,
        id: Self::Id,
        expected: i64,
        claim: &KeyClaim<'_>,
        event: &OutboxMessage,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async move {
            let query = sqlx::query(Self::statements().delete_keyed())
                .bind(Self::uuid(id))
                .bind(expected);
            keyed_write::write(conn, query, claim, event).await
        }
    }
}

/// One change as a request names it.
pub struct Write<'a> {
    /// The idempotency scope: the RPC's name.
    pub operation: &'a str,
    pub change: Change<'a>,
    pub context: &'a MessageContext,
    /// The states the row must still be in when written (empty: any).
    pub from: &'a [&'a str],
    /// A delete: a row that is already gone is done, not missing.
    pub removes: bool,
    /// Notified once the change and its event are written.
    pub outbox_written: &'a Notify,
}

/// One change: the conditional write (the row must still be at the version the change was
/// decided from, and in one of `from`), its outbox event and its idempotency key, in one
/// statement after the one that read the key and the row. Without an ETag a change lost
/// to a concurrent one is decided again, up to [`CHANGE_ATTEMPTS`] times; with one it
/// fails as stale. `None`: the row is gone.
pub async fn change<A: KeyedStore, E>(
    conn: &mut PgConnection,
    write: Write<'_>,
    decide: impl Fn(&A) -> Result<Outcome<A, E>, AppError>,
    outbox_message: impl Fn(&E, &MessageContext) -> OutboxMessage,
) -> Result<Option<A>, AppError> {
    let Write {
        operation,
        change,
        context,
        from,
        removes,
        outbox_written,
    } = write;
    let key = Key {
        operation,
        scope: &context.principal,
        key: checked_key(change.idempotency_key, "change")?,
        fingerprint: change.fingerprint,
    };
    let id = A::parse_id(change.id)?;
    let expected = parse_etag(change.etag)?;
    for attempt in 1..=CHANGE_ATTEMPTS {
        let (earlier, current) = A::find_keyed(conn, id, &key).await?;
        if let Some(claim) = earlier {
            return replayed(claim, key.key);
        }
        let Some(current) = current else {
            if removes {
                return Ok(None);
            }
            return Err(not_found::<A>(id));
        };
        if let Some(expected) = expected
            && expected != current.version()
        {
            return Err(AppError::Stale(format!(
                "{} `{id}` is at version {}, not {expected}; read it again and retry with its ETag",
                A::NAME,
                current.version()
            )));
        }
        let (stored, event) = match decide(&current)? {
            Outcome::Store(next, event) => (Some(next), event),
            Outcome::Remove(event) => (None, event),
        };
        let response = stored
            .as_ref()
            .map(ResponseCodec::encode_response)
            .unwrap_or_default();
        let claim = key.claim(&response);
        let message = outbox_message(&event, context);
        let written = match &stored {
            Some(next) => {
                A::update_keyed(conn, next, current.version(), from, &claim, &message).await
            }
            None => A::delete_keyed(conn, id, current.version(), &claim, &message).await,
        };
        let key_taken = match written {
            Ok(true) => {
                outbox_written.notify_one();
                tracing::info!(aggregate = A::NAME, id = %id, version = stored.as_ref().map(A::version), operation, correlation_id = %context.correlation_id, "aggregate changed");
                return Ok(stored);
            }
            // A concurrent change won the row: decide again. The next read looks the key up
            // too, so a retry racing its original answers as the original did.
            Ok(false) if expected.is_none() && attempt < CHANGE_ATTEMPTS => continue,
            Ok(false) => false,
            // A concurrent request with this key committed first, and this statement rolled
            // back whole.
            Err(error) if keyed_write::key_taken(&error) => true,
            Err(error) => return Err(error.into()),
        };
        // Answer as the request that took the key or won the row did, if it was this very
        // one (or refuse a reused key).
        if let Some(claim) =
            idempotency::lookup(conn, operation, key.scope, key.key, key.fingerprint).await?
        {
            return replayed(claim, key.key);
        }
        return Err(if key_taken {
            AppError::Internal(format!(
                "idempotency_key `{}` expired while this change ran",
                key.key
            ))
        } else {
            AppError::Stale(format!(
                "{} `{id}` was changed concurrently; read it again and retry with its new ETag",
                A::NAME
            ))
        });
    }
    Err(AppError::Internal("change attempts exhausted".into()))
}

/// One create as a request names it.
pub struct Create<'a> {
    /// The idempotency scope: the RPC's name.
    pub operation: &'a str,
    pub idempotency_key: &'a str,
    pub fingerprint: &'a [u8],
    pub context: &'a MessageContext,
}

/// A create: the key checked, the aggregate decided (`decide`), then the row, its event and
/// the key written in one statement (atomic on its own: no transaction needed, but it
/// joins the caller's, e.g. a consumer's). A retry gets the first answer; a key used
/// before for another request is refused.
pub async fn create<A: KeyedStore, E>(
    conn: &mut PgConnection,
    create: Create<'_>,
    decide: impl FnOnce() -> Result<(A, E), AppError>,
    outbox_message: impl Fn(&E, &MessageContext) -> OutboxMessage,
) -> Result<A, AppError> {
    let Create {
        operation,
        idempotency_key,
        fingerprint,
        context,
    } = create;
    let key = checked_key(idempotency_key, "create")?;
    let (created, event) = decide()?;
    let response = created.encode_response();
    let claim = KeyClaim {
        operation,
        scope: &context.principal,
        key,
        fingerprint,
        response: &response,
    };
    if !created
        .insert_keyed(conn, &claim, &outbox_message(&event, context))
        .await?
    {
        return replay_create(conn, operation, context, key, fingerprint).await;
    }
    Ok(created)
}

/// The answer to a create whose keyed write wrote nothing: the key was taken before, by
/// this very request (its stored answer) or by another one (refused).
pub async fn replay_create<A: KeyedStore>(
    conn: &mut PgConnection,
    operation: &str,
    context: &MessageContext,
    key: &str,
    fingerprint: &[u8],
) -> Result<A, AppError> {
    match idempotency::lookup(conn, operation, &context.principal, key, fingerprint).await? {
        Some(Claim::Replay(stored)) => decode::<A>(&stored),
        Some(_) => Err(AppError::Conflict(format!(
            "idempotency_key `{key}` was already used for a different request; use a new key for a new create"
        ))),
        // Purged between the two statements, a day after it was written.
        None => Err(AppError::Internal(format!(
            "idempotency_key `{key}` expired while this create ran"
        ))),
    }
}

/// The key of a keyed request, trimmed; `what` names the request in the refusal.
pub fn checked_key<'k>(key: &'k str, what: &str) -> Result<&'k str, AppError> {
    let key = key.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(AppError::InvalidArgument(format!(
            "idempotency_key is required (1 to {MAX_KEY_LEN} characters): send a unique key per {what} and reuse it only to retry that {what}"
        )));
    }
    Ok(key)
}

/// The version an ETag names: `3`, or `"3"` as HTTP quotes it; empty for none.
pub fn parse_etag(etag: &str) -> Result<Option<i64>, AppError> {
    let bare = etag.trim().trim_matches('"');
    if bare.is_empty() {
        return Ok(None);
    }
    bare.parse::<i64>().map(Some).map_err(|_| {
        AppError::InvalidArgument(format!("etag `{etag}` is not one this service issued"))
    })
}

pub fn not_found<A: KeyedStore>(id: A::Id) -> AppError {
    AppError::NotFound(format!("{} `{id}` not found", A::NAME))
}

/// A listing's page size (0: the default; at most [`MAX_PAGE_SIZE`]) and where it starts.
pub fn page_request<A: KeyedStore>(
    page_size: i32,
    page_token: &str,
) -> Result<(usize, Option<A::Id>), AppError> {
    let size = match u32::try_from(page_size) {
        Err(_) => {
            return Err(AppError::InvalidArgument(
                "page_size must not be negative".into(),
            ));
        }
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(n) => n.min(MAX_PAGE_SIZE),
    };
    let after = match page_token {
        "" => None,
        token => Some(A::parse_id(token).map_err(|_| {
            AppError::InvalidArgument(format!(
                "page_token `{token}` is not one this service issued"
            ))
        })?),
    };
    Ok((size as usize, after))
}

/// A page of `size` from `items`, read one past it: the extra one says another page follows,
/// starting after the page's last item (`token`).
pub fn page<A>(mut items: Vec<A>, size: usize, token: impl Fn(&A) -> String) -> Page<A> {
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items.last().map(token)
    } else {
        None
    };
    Page {
        items,
        next_page_token,
    }
}

/// The answer to a change whose idempotency key was used before.
pub fn replayed<A: KeyedStore>(claim: Claim, key: &str) -> Result<Option<A>, AppError> {
    match claim {
        Claim::Replay(stored) if stored.is_empty() => Ok(None),
        Claim::Replay(stored) => decode(&stored).map(Some),
        Claim::Mismatch | Claim::Claimed => Err(AppError::Conflict(format!(
            "idempotency_key `{key}` was already used for a different request; use a new key for a new change"
        ))),
    }
}

fn decode<A: ResponseCodec>(stored: &[u8]) -> Result<A, AppError> {
    A::decode_response(stored)
        .map_err(|e| AppError::Internal(format!("stored response is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_a_version_quoted_or_not() {
        assert_eq!(parse_etag("").unwrap(), None);
        assert_eq!(parse_etag("\"3\"").unwrap(), Some(3));
        assert_eq!(parse_etag(" 4 ").unwrap(), Some(4));
        assert!(matches!(
            parse_etag("W/x"),
            Err(AppError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_key_is_trimmed_and_bounded() {
        assert_eq!(checked_key(" k ", "change").unwrap(), "k");
        assert!(checked_key("  ", "change").is_err());
        assert!(checked_key(&"k".repeat(MAX_KEY_LEN + 1), "create").is_err());
    }

    #[test]
    fn a_page_read_one_past_its_size_names_the_next() {
        let full = page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(
            (full.items, full.next_page_token),
            (vec![1, 2], Some("2".into()))
        );
        let last = page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((last.items, last.next_page_token), (vec![1, 2], None));
    }
}
