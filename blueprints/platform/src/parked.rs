//! The outbox as an operator sees it, and what they may do about it: how many rows wait
//! to be published and since when, the rows parked because the broker refused them for
//! good (see `relay`), and the replay of parked rows once the cause is fixed. The console's
//! outbox page asks each service for this over the console's own link (`ListOutbox`), and
//! replays for an operator it signed in, named as the link token's `act` (`ReplayParked`).
//!
//! A replayed row waits to be published like a new one, with fresh attempts: refused
//! again, it is parked again. Later events of its aggregate may have gone out meanwhile,
//! so its consumers see it after them (the version says so).

use sqlx::PgPool;
use uuid::Uuid;

use crate::service_auth::{CONSOLE, Verified};

/// The most parked rows one answer lists.
pub const LIST_MAX: i64 = 200;
/// The most rows one replay takes.
pub const REPLAY_MAX: usize = 200;

/// A row the relay parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedRow {
    pub id: Uuid,
    pub topic: String,
    pub event_type: String,
    pub aggregate_id: Uuid,
    pub aggregate_version: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub parked_at_ms: i64,
    pub payload_bytes: i64,
}

/// The outbox's state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Rows waiting to be published (parked ones not counted).
    pub backlog: i64,
    /// How long the oldest of them has waited, by the database's clock (0 when none
    /// waits).
    pub oldest_age_ms: i64,
    /// Rows parked, all of them.
    pub parked_count: i64,
    /// The newest parked rows, at most the limit asked for.
    pub parked: Vec<ParkedRow>,
}

type ParkedTuple = (
    Uuid,
    String,
    String,
    Uuid,
    i64,
    i32,
    Option<String>,
    i64,
    i64,
    i64,
);

/// The outbox's state, with the newest `limit` parked rows (1 to [`LIST_MAX`]). Each query
/// follows one of the relay's partial indexes, so a large outbox of published rows costs
/// nothing here.
pub async fn status(pool: &PgPool, limit: i64) -> Result<OutboxStatus, sqlx::Error> {
    let (backlog, oldest_age_ms): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce((extract(epoch FROM now() - min(created_at)) * 1000)::bigint, 0) \
         FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let parked_count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let rows: Vec<ParkedTuple> = sqlx::query_as(
        "SELECT id, topic, event_type, aggregate_id, aggregate_version, attempts, last_error, \
         (extract(epoch FROM created_at) * 1000)::bigint, \
         (extract(epoch FROM parked_at) * 1000)::bigint, octet_length(payload)::bigint \
         FROM outbox WHERE parked_at IS NOT NULL ORDER BY parked_at DESC, id DESC LIMIT $1",
    )
    .bind(limit.clamp(1, LIST_MAX))
    .fetch_all(pool)
    .await?;
    Ok(OutboxStatus {
        backlog,
        oldest_age_ms,
        parked_count,
        parked: rows
            .into_iter()
            .map(
                |(
                    id,
                    topic,
                    event_type,
                    aggregate_id,
                    aggregate_version,
                    attempts,
                    last_error,
                    created_at_ms,
                    parked_at_ms,
                    payload_bytes,
                )| ParkedRow {
                    id,
                    topic,
                    event_type,
                    aggregate_id,
                    aggregate_version,
                    attempts,
                    last_error,
                    created_at_ms,
                    parked_at_ms,
                    payload_bytes,
                },
            )
            .collect(),
    })
}

/// Puts the parked rows among `ids` back in the relay's way, with fresh attempts; returns
/// how many were parked (a row replayed already, or never parked, is left alone).
pub async fn replay(pool: &PgPool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET parked_at = NULL, attempts = 0 \
         WHERE id = ANY($1) AND parked_at IS NOT NULL AND published_at IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Who may read the outbox's state: the console only, over its own link.
pub fn may_list(caller: Option<&Verified>) -> Result<(), tonic::Status> {
    match caller {
        Some(verified) if verified.caller == CONSOLE => Ok(()),
        _ => Err(tonic::Status::permission_denied(
            "ListOutbox is the console's: only its link may call it",
        )),
    }
}

/// Who may replay: the console, for an operator it signed in with this service's admin
/// scope, whom the call names (`act`). Returns the operator, for the log.
pub fn may_replay(caller: Option<&Verified>) -> Result<&str, tonic::Status> {
    match caller {
        Some(Verified {
            caller,
            user: Some(operator),
        }) if caller == CONSOLE => Ok(operator),
        Some(Verified { caller, .. }) if caller == CONSOLE => {
            Err(tonic::Status::permission_denied(
                "ReplayParked is an operator's: the console must name the operator it acts for",
            ))
        }
        _ => Err(tonic::Status::permission_denied(
            "ReplayParked is an operator's, through the console: only its link may call it",
        )),
    }
}

/// The ids of a replay: UUIDs, at most [`REPLAY_MAX`].
pub fn replay_ids(ids: &[String]) -> Result<Vec<Uuid>, tonic::Status> {
    if ids.is_empty() || ids.len() > REPLAY_MAX {
        return Err(tonic::Status::invalid_argument(format!(
            "ids: 1 to {REPLAY_MAX} outbox row ids, not {}",
            ids.len()
        )));
    }
    ids.iter()
        .map(|id| {
            Uuid::parse_str(id.trim()).map_err(|_| {
                tonic::Status::invalid_argument(format!("ids: '{id}' is not an outbox row id"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(caller: &str, user: Option<&str>) -> Verified {
        Verified {
            caller: caller.into(),
            user: user.map(str::to_string),
        }
    }

    #[test]
    fn only_the_console_lists_and_only_for_an_operator_replays() {
        assert!(may_list(Some(&verified("console", None))).is_ok());
        for other in [Some(verified("gateway", Some("token:ann"))), None] {
            assert_eq!(
                may_list(other.as_ref()).unwrap_err().code(),
                tonic::Code::PermissionDenied
            );
        }
        assert_eq!(
            may_replay(Some(&verified("console", Some("token:ann")))).unwrap(),
            "token:ann"
        );
        for refused in [
            verified("console", None),
            verified("gateway", Some("token:ann")),
            verified("orders", Some("token:ann")),
        ] {
            assert_eq!(
                may_replay(Some(&refused)).unwrap_err().code(),
                tonic::Code::PermissionDenied,
                "{refused:?}"
            );
        }
    }

    #[test]
    fn replay_ids_are_uuids_and_bounded() {
        let id = Uuid::now_v7();
        assert_eq!(replay_ids(&[id.to_string()]).unwrap(), [id]);
        assert!(replay_ids(&[]).is_err());
        assert!(replay_ids(&["x".into()]).is_err());
        assert!(replay_ids(&vec![id.to_string(); REPLAY_MAX + 1]).is_err());
    }
}
