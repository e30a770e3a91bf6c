//! Orchestrated sagas: the runtime every owner service shares. What a saga's steps call is
//! generated in the owner's `sagas.rs`; this module keeps the instances in the `saga`
//! table and moves them on.
//!
//! An instance is started by its owner's event, consumed through the inbox (so one event
//! starts one instance; `(saga_type, aggregate_id)` is unique too), with the subject as the
//! event carried it. A runner in every replica claims runnable instances with
//! `FOR UPDATE SKIP LOCKED` and leases them (`next_attempt_at` moves past the lease). The
//! runner keeps the lease while it advances an instance: every record renews it, and it is
//! released only when the instance waits (a backoff), ends or waits for an operator; so no
//! two runners call a step of one instance at once, and one that dies mid-step leaves it
//! to the next once the lease ends. Every transition is recorded by one conditional UPDATE
//! on `version`, which a claim bumps too: a runner whose lease was taken over learns it at
//! its next record (the fence) and stops. Each step is a call with the idempotency key
//! `saga:<id>:<step>:<forward|compensate>`: a step retried after a crash, a lost reply or
//! an expired lease has no second effect.
//!
//! A forward call is made only after its step is recorded as `trying` (may have been
//! sent): a runner that takes an instance over, before or after its deadline, finds every
//! step whose call may have reached a participant marked so, and settles it before
//! compensating (see below). A step still `pending` was never sent.
//!
//! States: `running` (forward steps) → `completing` (`on_success`) → `completed`; or, once
//! a step is refused or the deadline passes, `compensating` (completed steps compensated
//! in reverse) → `failing` (`on_failure`) → `compensated`. A compensation is retried with
//! backoff; after `compensation_attempts` failures the instance is `compensation_failed`
//! and waits for an operator (the `RetrySaga` RPC) without holding anything up. A step
//! whose outcome is unknown (`trying`: sent, but no answer recorded) is settled before it
//! is compensated: its forward call is sent again with the same key, which replays what
//! was done, or does it, or is refused (then there is nothing to undo). An instance whose
//! recorded steps no longer match its saga's definition (a spec change removed or renamed
//! steps while it was in flight) is `parked`: listed, counted and alerted on, never run
//! against steps it did not record.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::backoff;
use crate::config::{ConfigError, Env};
use crate::context::MessageContext;
use crate::error::AppError;
use crate::resilience::{CallContext, deadline};

pub const SAGA_STARTED: &str = "saga_started_total";
pub const SAGA_COMPLETED: &str = "saga_completed_total";
pub const SAGA_IN_FLIGHT: &str = "saga_in_flight";
pub const SAGA_COMPENSATION_FAILED: &str = "saga_compensation_failed";
pub const SAGA_PARKED: &str = "saga_parked";
pub const SAGA_STEP_DURATION: &str = "saga_step_duration_seconds";

/// Instances claimed per round, at most; they advance concurrently.
const BATCH: i64 = 32;
/// Transitions one claim may make before the instance goes back to the queue.
const MAX_TRANSITIONS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Completing,
    Compensating,
    Failing,
    Completed,
    Compensated,
    CompensationFailed,
    /// Its recorded steps do not match its definition any more: waits for an operator.
    Parked,
}

impl State {
    pub const RUNNABLE: [&'static str; 4] = ["running", "completing", "compensating", "failing"];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Completing => "completing",
            State::Compensating => "compensating",
            State::Failing => "failing",
            State::Completed => "completed",
            State::Compensated => "compensated",
            State::CompensationFailed => "compensation_failed",
            State::Parked => "parked",
        }
    }

    /// Whether it waits for an operator's retry (`RetrySaga`).
    pub fn waits_for_operator(self) -> bool {
        matches!(self, State::CompensationFailed | State::Parked)
    }

    pub(crate) fn parse(s: &str) -> Option<State> {
        Some(match s {
            "running" => State::Running,
            "completing" => State::Completing,
            "compensating" => State::Compensating,
            "failing" => State::Failing,
            "completed" => State::Completed,
            "compensated" => State::Compensated,
            "compensation_failed" => State::CompensationFailed,
            "parked" => State::Parked,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Never called.
    Pending,
    /// May have been called, outcome unknown: recorded before every forward call, and kept
    /// when a call fails without an answer. Retried forward, or settled before compensating.
    Trying,
    Done,
    /// The participant said no: nothing happened there.
    Refused,
    Compensated,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Trying => "trying",
            StepStatus::Done => "done",
            StepStatus::Refused => "refused",
            StepStatus::Compensated => "compensated",
        }
    }
}

/// One step of one instance, as stored in `saga.steps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: StepStatus,
    /// The step's label when the instance started, to tell a changed definition (absent
    /// in instances an earlier runner started: only the number of steps is compared then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A create's result: the new aggregate's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was first tried, when it was done or refused, and when it was undone
    /// (milliseconds since the epoch; absent in steps an earlier runner moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensated_ms: Option<i64>,
}

impl StepRecord {
    fn pending(label: &str) -> Self {
        StepRecord {
            status: StepStatus::Pending,
            label: Some(label.to_string()),
            result: None,
            error: None,
            started_ms: None,
            finished_ms: None,
            compensated_ms: None,
        }
    }
}

/// Records when each step that `apply` moved began, ended and was undone (milliseconds
/// since the epoch), for the timeline `ListSagas` shows; `apply` itself keeps no clock.
pub fn stamp(before: &Instance, after: &mut Instance, now_ms: i64) {
    for (i, step) in after.steps.iter_mut().enumerate() {
        let was = before.steps.get(i).map(|s| s.status);
        if was == Some(step.status) {
            continue;
        }
        match step.status {
            StepStatus::Trying => {
                step.started_ms.get_or_insert(now_ms);
            }
            StepStatus::Done | StepStatus::Refused => {
                step.started_ms.get_or_insert(now_ms);
                step.finished_ms = Some(now_ms);
            }
            StepStatus::Compensated => step.compensated_ms = Some(now_ms),
            StepStatus::Pending => {}
        }
    }
}

/// What a saga is, as its owner's generated code describes it.
#[derive(Debug)]
pub struct Definition {
    pub name: &'static str,
    pub steps: &'static [StepInfo],
    pub timeout: Duration,
}

impl Definition {
    /// Why an instance's recorded steps cannot be run by this definition, if they cannot:
    /// another number of steps, or a step recorded under another label.
    pub fn mismatch(&self, steps: &[StepRecord]) -> Option<String> {
        if steps.len() != self.steps.len() {
            return Some(format!(
                "the saga's definition changed while it ran: it recorded {} steps, the definition has {}",
                steps.len(),
                self.steps.len()
            ));
        }
        let changed = steps
            .iter()
            .zip(self.steps)
            .enumerate()
            .find(|(_, (recorded, info))| {
                recorded
                    .label
                    .as_deref()
                    .is_some_and(|label| label != info.label)
            })?;
        let (index, (recorded, info)) = changed;
        Some(format!(
            "the saga's definition changed while it ran: step {} was `{}`, it is `{}` now",
            index + 1,
            recorded.label.as_deref().unwrap_or_default(),
            info.label
        ))
    }
}

#[derive(Debug)]
pub struct StepInfo {
    pub label: &'static str,
    /// Whether the step has a compensation.
    pub compensable: bool,
}

/// One saga instance, as claimed from the table.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: uuid::Uuid,
    pub saga_type: String,
    pub aggregate_id: uuid::Uuid,
    pub state: State,
    /// The step the instance is at: the next forward step while running, the next one to
    /// look at (downwards) while compensating.
    pub step: i32,
    pub steps: Vec<StepRecord>,
    /// The subject as the starting event carried it (the owner's aggregate, protobuf).
    pub subject: Vec<u8>,
    /// Why it is compensating, once it is.
    pub reason: Option<String>,
    /// Failed attempts of the current step.
    pub attempts: i32,
    pub last_error: Option<String>,
    pub version: i64,
    /// Whether its deadline has passed (as of the claim).
    pub expired: bool,
    pub correlation_id: String,
    pub traceparent: String,
}

impl Instance {
    /// The idempotency key of `step`'s call in one direction.
    pub fn key(&self, step: usize, direction: Direction) -> String {
        format!("saga:{}:{step}:{}", self.id, direction.as_str())
    }

    /// The context the calls it makes carry: its correlation id and trace.
    pub fn context(&self) -> MessageContext {
        MessageContext::from_parts(Some(&self.correlation_id), Some(&self.traceparent))
    }

    /// The reason in words, for a command's string the subject does not have.
    pub fn reason_text(&self) -> String {
        match &self.reason {
            Some(reason) => format!("saga {}: {reason}", self.saga_type),
            None => format!("saga {} completed", self.saga_type),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Compensate,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Compensate => "compensate",
        }
    }
}

/// Why a call did not succeed. What it says is what `ListSagas` shows (the instance's
/// `last_error`, a step's `error`): a category, or a refusal in the participant's own
/// words, never the transport's details (addresses, connection errors), which are logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A business refusal (FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND,
    /// ALREADY_EXISTS, OUT_OF_RANGE): retrying gives the same answer.
    #[error("refused: {0}")]
    Refused(String),
    /// Anything else (UNAVAILABLE, a deadline, a breaker open): may succeed later.
    #[error("{0}")]
    Failed(String),
}

/// The category a failed call is shown under: `unavailable`, `deadline`, or the status
/// code's name in snake case.
pub fn failure_category(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded | Code::Cancelled => "deadline",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Aborted => "aborted",
        Code::Internal => "internal",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::Unimplemented => "unimplemented",
        Code::DataLoss => "data_loss",
        _ => "unknown",
    }
}

impl From<tonic::Status> for StepError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange => StepError::Refused(status.message().to_string()),
            code => {
                let category = failure_category(code);
                // The details stay here, in the step's span: the API shows the category.
                tracing::warn!(code = ?code, detail = status.message(), category, "a saga's call failed");
                StepError::Failed(category.to_string())
            }
        }
    }
}

impl From<AppError> for StepError {
    fn from(error: AppError) -> Self {
        StepError::from(tonic::Status::from(error))
    }
}

/// The owner's sagas: what each step calls (generated in its `sagas.rs`).
pub trait Sagas: Send + Sync + 'static {
    fn definitions(&self) -> &'static [Definition];

    /// Calls `step` forward; a create returns the new aggregate's id.
    fn forward(
        &self,
        instance: &Instance,
        step: usize,
    ) -> impl Future<Output = Result<Option<String>, StepError>> + Send;

    /// Undoes `step` (one with a compensation) given what it returned.
    fn compensate(
        &self,
        instance: &Instance,
        step: usize,
        result: Option<&str>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Runs `on_success` or `on_failure` on the subject.
    fn finish(
        &self,
        instance: &Instance,
        success: bool,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
}

#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// How long a claim holds an instance: longer than any one step's call takes.
    pub lease: Duration,
    /// How often idle runners look for work nobody signalled (a lease that ended).
    pub poll_every: Duration,
    /// The budget of one step's call, retries included; well below the lease.
    pub step_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Failed attempts of one compensation before the instance waits for an operator.
    pub compensation_attempts: u32,
    /// Fault injection, for the end-to-end tests only (`FAULTS__SAGA_DIE_AFTER_STEP`): the
    /// process dies at once (abort, as SIGKILL would end it) right after this step's forward
    /// call succeeded and before its outcome is recorded, the window a crash can hit.
    pub die_after_step: Option<usize>,
}

impl SagaConfig {
    /// For tests: quick retries, and few before a compensation waits for an operator.
    pub fn in_process() -> Self {
        SagaConfig {
            lease: Duration::from_secs(10),
            poll_every: Duration::from_millis(50),
            step_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            compensation_attempts: 3,
            die_after_step: None,
        }
    }

    /// `SAGA__LEASE_MS` (30000), `SAGA__POLL_MS` (500), `SAGA__STEP_TIMEOUT_MS` (10000),
    /// `SAGA__BACKOFF_BASE_MS` (200), `SAGA__BACKOFF_MAX_MS` (10000),
    /// `SAGA__COMPENSATION_ATTEMPTS` (10). The lease must be at least twice the step
    /// timeout, so a claim never ends while its call may still be running.
    pub fn from_env(env: &Env) -> Result<SagaConfig, ConfigError> {
        let millis = |key: &str, default: u64| -> Result<Duration, ConfigError> {
            let value: u64 = env.parse_or(key, default)?;
            if value < 10 {
                return Err(ConfigError::Invalid {
                    key: env.key(key),
                    reason: format!("{value} ms is too short; use 10 or more (default {default})"),
                });
            }
            Ok(Duration::from_millis(value))
        };
        let attempts: u32 = env.parse_or("SAGA__COMPENSATION_ATTEMPTS", 10)?;
        if attempts == 0 {
            return Err(ConfigError::Invalid {
                key: env.key("SAGA__COMPENSATION_ATTEMPTS"),
                reason: "0: a compensation needs at least one attempt (default 10)".into(),
            });
        }
        let lease = millis("SAGA__LEASE_MS", 30_000)?;
        let step_timeout = millis("SAGA__STEP_TIMEOUT_MS", 10_000)?;
        if lease < step_timeout * 2 {
            return Err(ConfigError::Invalid {
                key: env.key("SAGA__LEASE_MS"),
                reason: format!(
                    "{} ms is less than twice SAGA__STEP_TIMEOUT_MS ({} ms): a claim could end while its call still runs",
                    lease.as_millis(),
                    step_timeout.as_millis()
                ),
            });
        }
        Ok(SagaConfig {
            lease,
            step_timeout,
            poll_every: millis("SAGA__POLL_MS", 500)?,
            backoff_base: millis("SAGA__BACKOFF_BASE_MS", 200)?,
            backoff_max: millis("SAGA__BACKOFF_MAX_MS", 10_000)?,
            compensation_attempts: attempts,
            die_after_step: match env.parse_or("FAULTS__SAGA_DIE_AFTER_STEP", -1i64)? {
                step if step >= 0 => Some(step as usize),
                _ => None,
            },
        })
    }
}

/// Starts an instance of `definition` for the subject the event carried, inside the
/// consumer's transaction (with the inbox row). False when it exists already.
pub async fn start(
    conn: &mut PgConnection,
    definition: &Definition,
    aggregate_id: uuid::Uuid,
    subject: &[u8],
    context: &MessageContext,
) -> Result<bool, sqlx::Error> {
    let steps = Json(
        definition
            .steps
            .iter()
            .map(|s| StepRecord::pending(s.label))
            .collect::<Vec<_>>(),
    );
    let inserted = sqlx::query(
        "INSERT INTO saga (id, saga_type, aggregate_id, state, step, steps, subject, deadline, correlation_id, traceparent) \
         VALUES ($1, $2, $3, 'running', 0, $4, $5, now() + $6 * interval '1 millisecond', $7, $8) \
         ON CONFLICT (saga_type, aggregate_id) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(definition.name)
    .bind(aggregate_id)
    .bind(steps)
    .bind(subject)
    .bind(definition.timeout.as_millis() as i64)
    .bind(&context.correlation_id)
    .bind(&context.traceparent)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        metrics::counter!(SAGA_STARTED, "saga" => definition.name).increment(1);
        tracing::info!(saga = definition.name, %aggregate_id, correlation_id = %context.correlation_id, "saga started");
    }
    Ok(inserted)
}

type Row = (
    uuid::Uuid,
    String,
    uuid::Uuid,
    String,
    i32,
    Json<Vec<StepRecord>>,
    Vec<u8>,
    Option<String>,
    i32,
    Option<String>,
    i64,
    bool,
    String,
    String,
);

fn instance(row: Row) -> Result<Instance, sqlx::Error> {
    let state = State::parse(&row.3)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown saga state `{}`", row.3).into()))?;
    Ok(Instance {
        id: row.0,
        saga_type: row.1,
        aggregate_id: row.2,
        state,
        step: row.4,
        steps: row.5.0,
        subject: row.6,
        reason: row.7,
        attempts: row.8,
        last_error: row.9,
        version: row.10,
        expired: row.11,
        correlation_id: row.12,
        traceparent: row.13,
    })
}

/// Claims up to `limit` runnable instances whose time has come, leasing them for `lease`.
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Instance>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "UPDATE saga SET next_attempt_at = now() + $2 * interval '1 millisecond', version = version + 1 \
         WHERE id IN ( \
             SELECT id FROM saga WHERE state = ANY($3) AND next_attempt_at <= now() \
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED \
         ) RETURNING id, saga_type, aggregate_id, state, step, steps, subject, reason, attempts, \
             last_error, version, deadline <= now(), correlation_id, traceparent",
    )
    .bind(limit)
    .bind(lease.as_millis() as i64)
    .bind(State::RUNNABLE.as_slice())
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(instance).collect()
}

/// Stores `next` if nobody changed the instance since `expected` (its version when read),
/// with its next attempt `next_attempt_in` from now (the renewed lease while the runner
/// goes on, see [`lease_after`]); returns the new version and whether the deadline has
/// passed, or None when another runner took the instance over.
async fn record(
    pool: &PgPool,
    next: &Instance,
    expected: i64,
    next_attempt_in: Duration,
) -> Result<Option<(i64, bool)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE saga SET state = $3, step = $4, steps = $5, reason = $6, attempts = $7, last_error = $8, \
             next_attempt_at = now() + $9 * interval '1 millisecond', updated_at = now(), version = version + 1 \
         WHERE id = $1 AND version = $2 RETURNING version, deadline <= now()",
    )
    .bind(next.id)
    .bind(expected)
    .bind(next.state.as_str())
    .bind(next.step)
    .bind(Json(&next.steps))
    .bind(&next.reason)
    .bind(next.attempts)
    .bind(&next.last_error)
    .bind(next_attempt_in.as_millis() as i64)
    .fetch_optional(pool)
    .await
}

/// Gives up the lease on an instance this runner still holds at `version` (it made as many
/// transitions as one claim may): any runner may claim it at once.
async fn release(pool: &PgPool, id: uuid::Uuid, version: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE saga SET next_attempt_at = now(), version = version + 1 WHERE id = $1 AND version = $2")
        .bind(id)
        .bind(version)
        .execute(pool)
        .await
        .map(drop)
}

/// What the runner does next with an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Records the step as `trying` before its forward call is made (no call).
    Begin(usize),
    Forward(usize),
    /// Sends an unknown step's forward call again to learn its outcome.
    Settle(usize),
    Compensate(usize),
    Finish {
        success: bool,
    },
    /// The deadline passed while running: compensation starts (no call).
    Expire,
    /// Nothing: the instance is final or waits for an operator.
    None,
}

impl Action {
    /// Whether the action calls a participant (or the subject); `Begin` and `Expire` only
    /// record.
    pub fn calls(self) -> bool {
        matches!(
            self,
            Action::Forward(_) | Action::Settle(_) | Action::Compensate(_) | Action::Finish { .. }
        )
    }
}

/// The next action for `instance` (normalized, see [`normalize`]).
pub fn action(instance: &Instance) -> Action {
    match instance.state {
        State::Running if instance.expired => Action::Expire,
        State::Running => {
            let step = instance.step as usize;
            match instance.steps.get(step).map(|s| s.status) {
                Some(StepStatus::Pending) => Action::Begin(step),
                Some(_) => Action::Forward(step),
                None => Action::None,
            }
        }
        State::Completing => Action::Finish { success: true },
        State::Failing => Action::Finish { success: false },
        State::Compensating => {
            let step = instance.step as usize;
            match instance.steps.get(step).map(|s| s.status) {
                Some(StepStatus::Trying) => Action::Settle(step),
                Some(_) => Action::Compensate(step),
                None => Action::None,
            }
        }
        State::Completed | State::Compensated | State::CompensationFailed | State::Parked => {
            Action::None
        }
    }
}

/// Moves the cursor past what needs no call: forward past the last step (`completing`);
/// while compensating, down past steps that never happened, were compensated or have no
/// compensation, to `failing` below the first. A step that may have been sent (`trying`)
/// always stops it: it is settled first.
pub fn normalize(instance: &mut Instance, definition: &Definition) {
    if instance.state == State::Running && instance.step as usize >= instance.steps.len() {
        instance.state = State::Completing;
    }
    if instance.state == State::Compensating {
        instance.step = instance.step.min(instance.steps.len() as i32 - 1);
        while instance.step >= 0 {
            let step = instance.step as usize;
            let record = &instance.steps[step];
            let needs_call = match record.status {
                StepStatus::Trying => true,
                StepStatus::Done => definition.steps.get(step).is_some_and(|s| s.compensable),
                StepStatus::Pending | StepStatus::Refused | StepStatus::Compensated => false,
            };
            if needs_call {
                break;
            }
            instance.step -= 1;
        }
        if instance.step < 0 {
            instance.state = State::Failing;
            instance.step = 0;
        }
    }
}

/// The outcome of one action's call.
pub type Outcome = Result<Option<String>, StepError>;

/// What an action's outcome makes of the instance, and how long it waits before the next
/// action (zero: at once).
pub fn apply(
    instance: &Instance,
    definition: &Definition,
    action: Action,
    outcome: Outcome,
    config: &SagaConfig,
) -> (Instance, Duration) {
    let mut next = instance.clone();
    let mut wait = Duration::ZERO;
    let label = |step: usize| definition.steps.get(step).map_or("?", |s| s.label);
    let mut failed = |next: &mut Instance, error: String, compensating: bool| {
        next.attempts += 1;
        next.last_error = Some(error);
        if compensating && next.attempts as u32 >= config.compensation_attempts {
            next.state = State::CompensationFailed;
        } else {
            wait = backoff::full_jitter(
                config.backoff_base,
                config.backoff_max,
                next.attempts as u32 - 1,
            );
        }
    };
    let succeeded = |next: &mut Instance| {
        next.attempts = 0;
        next.last_error = None;
    };
    match (action, outcome) {
        (Action::None, _) => {}
        (Action::Begin(step), _) => next.steps[step].status = StepStatus::Trying,
        (Action::Expire, _) => {
            next.reason = Some(format!(
                "timed out after {} ms",
                definition.timeout.as_millis()
            ));
            next.state = State::Compensating;
            succeeded(&mut next);
        }
        (Action::Forward(step), Ok(result)) => {
            next.steps[step] = StepRecord {
                status: StepStatus::Done,
                result,
                error: None,
                ..next.steps[step].clone()
            };
            next.step += 1;
            succeeded(&mut next);
        }
        (Action::Forward(step), Err(StepError::Refused(e))) => {
            next.reason = Some(format!("step {} ({}) refused: {e}", step + 1, label(step)));
            next.steps[step] = StepRecord {
                status: StepStatus::Refused,
                result: None,
                error: Some(e),
                ..next.steps[step].clone()
            };
            next.state = State::Compensating;
            next.step = step as i32 - 1;
            succeeded(&mut next);
        }
        (Action::Forward(step), Err(StepError::Failed(e))) => {
            next.steps[step].status = StepStatus::Trying;
            next.steps[step].error = Some(e.clone());
            failed(&mut next, e, false);
        }
        (Action::Settle(step), Ok(result)) => {
            next.steps[step] = StepRecord {
                status: StepStatus::Done,
                result,
                error: None,
                ..next.steps[step].clone()
            };
            succeeded(&mut next);
        }
        (Action::Settle(step), Err(StepError::Refused(e))) => {
            next.steps[step] = StepRecord {
                status: StepStatus::Refused,
                result: None,
                error: Some(e),
                ..next.steps[step].clone()
            };
            next.step -= 1;
            succeeded(&mut next);
        }
        (Action::Settle(_), Err(StepError::Failed(e))) => failed(&mut next, e, true),
        (Action::Compensate(step), Ok(_)) => {
            next.steps[step].status = StepStatus::Compensated;
            next.step -= 1;
            succeeded(&mut next);
        }
        (Action::Compensate(step), Err(e)) => {
            next.steps[step].error = Some(format!("compensation: {e}"));
            failed(&mut next, e.to_string(), true);
        }
        (Action::Finish { success: true }, Ok(_)) => {
            next.state = State::Completed;
            succeeded(&mut next);
        }
        (Action::Finish { success: true }, Err(StepError::Refused(e))) => {
            // The subject will not take the success (changed meanwhile): undo the steps.
            next.reason = Some(format!("on_success refused: {e}"));
            next.state = State::Compensating;
            next.step = next.steps.len() as i32 - 1;
            succeeded(&mut next);
        }
        // A subject that refuses `on_failure` is already past it (cancelled meanwhile).
        (Action::Finish { success: false }, Ok(_) | Err(StepError::Refused(_))) => {
            next.state = State::Compensated;
            succeeded(&mut next);
        }
        (Action::Finish { .. }, Err(StepError::Failed(e))) => failed(&mut next, e, false),
    }
    normalize(&mut next, definition);
    (next, wait)
}

/// What recording a transition does with the runner's lease on the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The instance's next attempt, from now: a renewed lease while this runner goes on.
    pub next_attempt_in: Duration,
    /// Whether this runner goes on with the instance after the record.
    pub keep: bool,
}

/// The lease after a transition to `next` that waits `wait`: kept (renewed for a whole
/// `lease`, so no other runner claims the instance between two of this runner's calls)
/// while there is more to do at once; released when it waits (the backoff is its next
/// attempt), ends or waits for an operator.
pub fn lease_after(next: &Instance, wait: Duration, config: &SagaConfig) -> Lease {
    if action(next) == Action::None {
        Lease {
            next_attempt_in: Duration::ZERO,
            keep: false,
        }
    } else if !wait.is_zero() {
        Lease {
            next_attempt_in: wait,
            keep: false,
        }
    } else {
        Lease {
            next_attempt_in: config.lease,
            keep: true,
        }
    }
}

/// Whether a lease with `remaining` time left covers a whole call: a runner that was held
/// up since its last record (a paused process, a slow database) does not start a call that
/// could outlive its lease, and so run beside the runner that claims the instance next.
pub fn lease_covers_call(remaining: Duration, config: &SagaConfig) -> bool {
    remaining > config.step_timeout
}

/// Runs the owner's sagas until `stop` turns true; `wake` is notified when an instance
/// starts or an operator retries one.
pub async fn run<S: Sagas>(
    pool: PgPool,
    sagas: Arc<S>,
    config: SagaConfig,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    while !*stop.borrow() {
        // A lease is counted from before the claim was sent: never later than the database's.
        let claimed_at = Instant::now();
        let pause = match claim(&pool, BATCH, config.lease).await {
            Ok(claimed) if claimed.is_empty() => {
                failures = 0;
                config.poll_every
            }
            Ok(claimed) => {
                failures = 0;
                let work = futures_util::future::join_all(
                    claimed
                        .into_iter()
                        .map(|i| advance(&pool, &*sagas, &config, i, claimed_at)),
                );
                tokio::select! {
                    _ = work => {}
                    // Calls in flight are dropped: their instances are leased and resume
                    // where they were recorded, with the same keys.
                    _ = stop.changed() => break,
                }
                continue;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff::full_jitter(config.backoff_base, config.backoff_max, failures);
                tracing::warn!(error = %e, ?delay, "cannot claim sagas");
                delay
            }
        };
        tokio::select! {
            _ = stop.changed() => {}
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
    tracing::info!("saga runner stopped");
}

/// Parks an instance its definition cannot run any more (or that has no definition here),
/// with the reason; it waits for an operator and is never claimed again.
async fn park(pool: &PgPool, instance: &Instance, why: String) {
    tracing::error!(saga = %instance.saga_type, id = %instance.id, aggregate_id = %instance.aggregate_id, reason = %why, "saga parked: it waits for an operator");
    let parked = Instance {
        state: State::Parked,
        last_error: Some(why),
        ..instance.clone()
    };
    if let Err(e) = record(pool, &parked, instance.version, Duration::ZERO).await {
        tracing::warn!(error = %e, saga = %instance.saga_type, id = %instance.id, "cannot park a saga");
    }
}

/// Moves one claimed instance on until it waits (backoff), finishes, or another runner
/// took it over. The lease is renewed at every record and released when it stops.
async fn advance<S: Sagas>(
    pool: &PgPool,
    sagas: &S,
    config: &SagaConfig,
    mut instance: Instance,
    claimed_at: Instant,
) {
    let Some(definition) = sagas
        .definitions()
        .iter()
        .find(|d| d.name == instance.saga_type)
    else {
        return park(
            pool,
            &instance,
            format!(
                "this service runs no saga `{}` any more",
                instance.saga_type
            ),
        )
        .await;
    };
    if let Some(why) = definition.mismatch(&instance.steps) {
        return park(pool, &instance, why).await;
    }
    // What an operator's retry stored is not normalized (a parked instance compensates
    // from its last step, which may never have happened): the cursor moves to what needs
    // a call first, as after every transition.
    normalize(&mut instance, definition);
    let mut held_until = claimed_at + config.lease;
    for _ in 0..MAX_TRANSITIONS {
        let action = action(&instance);
        if action == Action::None {
            return;
        }
        if action.calls()
            && !lease_covers_call(held_until.saturating_duration_since(Instant::now()), config)
        {
            tracing::warn!(saga = definition.name, id = %instance.id, "the lease is too short for another call; leaving the saga to the next claim");
            return;
        }
        let (step, direction) = match action {
            Action::Begin(s) => (Some(s), "begin"),
            Action::Forward(s) | Action::Settle(s) => (Some(s), "forward"),
            Action::Compensate(s) => (Some(s), "compensate"),
            Action::Finish { success: true } => (None, "on_success"),
            Action::Finish { success: false } => (None, "on_failure"),
            Action::Expire | Action::None => (None, "expire"),
        };
        let label = step.map_or(direction, |s| definition.steps[s].label);
        let span = tracing::info_span!(
            "saga step",
            otel.name = %format!("saga {} {label} {direction}", definition.name),
            saga = definition.name,
            saga_id = %instance.id,
            step = label,
            direction,
            correlation_id = %instance.correlation_id,
        );
        crate::telemetry::continue_trace(&span, Some(&instance.traceparent));
        let started = Instant::now();
        let outcome: Outcome = if action.calls() {
            // The calls' correlation id and budget (no request is being served here); the
            // timeout drops a call that outlives it, so a call never outlives the lease.
            let call = CallContext::new(instance.correlation_id.clone(), config.step_timeout);
            let made = deadline::scope(call, async {
                match action {
                    Action::Forward(s) | Action::Settle(s) => sagas.forward(&instance, s).await,
                    Action::Compensate(s) => {
                        let result = instance.steps[s].result.clone();
                        sagas
                            .compensate(&instance, s, result.as_deref())
                            .await
                            .map(|()| None)
                    }
                    Action::Finish { success } => {
                        sagas.finish(&instance, success).await.map(|()| None)
                    }
                    Action::Begin(_) | Action::Expire | Action::None => Ok(None),
                }
            });
            tokio::time::timeout(config.step_timeout, made)
                .instrument(span.clone())
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(parent: &span, timeout_ms = config.step_timeout.as_millis() as u64, "a saga's call had no answer within the step timeout");
                    Err(StepError::Failed(failure_category(tonic::Code::DeadlineExceeded).to_string()))
                })
        } else {
            Ok(None)
        };
        let result = match &outcome {
            Ok(_) => "ok",
            Err(StepError::Refused(_)) => "refused",
            Err(StepError::Failed(_)) => "failed",
        };
        if action.calls() {
            metrics::histogram!(SAGA_STEP_DURATION, "saga" => definition.name, "step" => label, "direction" => direction, "outcome" => result)
                .record(started.elapsed().as_secs_f64());
        }
        if matches!((action, &outcome), (Action::Forward(s), Ok(_)) if config.die_after_step == Some(s))
        {
            tracing::error!(saga = definition.name, id = %instance.id, step = label, "fault injection: dying before the step's outcome is recorded");
            std::process::abort();
        }
        let (mut next, wait) = apply(&instance, definition, action, outcome.clone(), config);
        stamp(
            &instance,
            &mut next,
            crate::time::Timestamp::from_system_time(std::time::SystemTime::now()).micros() / 1000,
        );
        if action.calls() {
            match &outcome {
                Ok(_) => {
                    tracing::info!(parent: &span, saga = definition.name, id = %instance.id, step = label, direction, state = next.state.as_str(), "saga step done")
                }
                Err(e) => {
                    tracing::warn!(parent: &span, saga = definition.name, id = %instance.id, step = label, direction, error = %e, attempts = next.attempts, state = next.state.as_str(), "saga step did not succeed")
                }
            }
        }
        let lease = lease_after(&next, wait, config);
        let recording = Instant::now();
        match record(pool, &next, instance.version, lease.next_attempt_in).await {
            Ok(Some((version, expired))) => {
                instance = Instance {
                    version,
                    expired,
                    ..next
                };
                held_until = recording + config.lease;
            }
            Ok(None) => {
                tracing::warn!(saga = definition.name, id = %instance.id, "another runner took this saga over (its lease had ended); leaving it to it");
                return;
            }
            Err(e) => {
                // Unrecorded: the lease ends and the step is sent again with its key.
                tracing::warn!(error = %e, saga = definition.name, id = %instance.id, "cannot record a saga step");
                return;
            }
        }
        match instance.state {
            State::Completed | State::Compensated => {
                let outcome = instance.state.as_str();
                metrics::counter!(SAGA_COMPLETED, "saga" => definition.name, "outcome" => outcome)
                    .increment(1);
                tracing::info!(saga = definition.name, id = %instance.id, aggregate_id = %instance.aggregate_id, outcome, reason = ?instance.reason, "saga finished");
                return;
            }
            State::CompensationFailed => {
                tracing::error!(
                    saga = definition.name, id = %instance.id, aggregate_id = %instance.aggregate_id,
                    error = ?instance.last_error,
                    "saga compensation keeps failing; it waits for an operator (RetrySaga once the cause is fixed)"
                );
                return;
            }
            _ if !lease.keep => return,
            _ => {}
        }
    }
    // As many transitions as one claim may make: back to the queue, for any runner.
    if let Err(e) = release(pool, instance.id, instance.version).await {
        tracing::warn!(error = %e, saga = definition.name, id = %instance.id, "cannot release a saga");
    }
}

/// An instance as `ListSagas` shows it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: uuid::Uuid,
    pub saga_type: String,
    pub state: String,
    pub steps: Vec<StepRecord>,
    pub reason: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The trace of the event that started it.
    pub traceparent: String,
    /// The owner's aggregate it is about.
    pub subject: uuid::Uuid,
}

/// The columns a [`Summary`] is read from (a macro, so the queries stay static strings).
macro_rules! summary_columns {
    () => {
        "id, saga_type, state, steps, reason, attempts, last_error, \
         (extract(epoch FROM created_at) * 1000)::bigint, (extract(epoch FROM updated_at) * 1000)::bigint, \
         traceparent, aggregate_id"
    };
}

type SummaryRow = (
    uuid::Uuid,
    String,
    String,
    Json<Vec<StepRecord>>,
    Option<String>,
    i32,
    Option<String>,
    i64,
    i64,
    String,
    uuid::Uuid,
);

fn summary(r: SummaryRow) -> Summary {
    Summary {
        id: r.0,
        saga_type: r.1,
        state: r.2,
        steps: r.3.0,
        reason: r.4,
        attempts: r.5,
        last_error: r.6,
        created_at_ms: r.7,
        updated_at_ms: r.8,
        traceparent: r.9,
        subject: r.10,
    }
}

/// The instances whose subject is `aggregate_id`, oldest first.
pub async fn list(pool: &PgPool, aggregate_id: uuid::Uuid) -> Result<Vec<Summary>, sqlx::Error> {
    let rows: Vec<SummaryRow> = sqlx::query_as(concat!(
        "SELECT ",
        summary_columns!(),
        " FROM saga WHERE aggregate_id = $1 ORDER BY created_at, id"
    ))
    .bind(aggregate_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(summary).collect())
}

/// Most instances `list_recent` answers at once.
pub const RECENT_MAX: i64 = 200;

/// The instances changed last, newest first, at most `limit` (1 to [`RECENT_MAX`]): what the
/// console's sagas page shows.
pub async fn list_recent(pool: &PgPool, limit: i64) -> Result<Vec<Summary>, sqlx::Error> {
    let rows: Vec<SummaryRow> = sqlx::query_as(concat!(
        "SELECT ",
        summary_columns!(),
        " FROM saga ORDER BY updated_at DESC, id DESC LIMIT $1"
    ))
    .bind(limit.clamp(1, RECENT_MAX))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(summary).collect())
}

/// Who may list the newest instances of every subject: the console only (its sagas page),
/// over its own link. A service has no business browsing another's sagas, and the gateway
/// offers each subject's own.
pub fn may_list_recent(
    caller: Option<&crate::service_auth::Verified>,
) -> Result<(), tonic::Status> {
    match caller {
        Some(verified) if verified.caller == crate::service_auth::CONSOLE => Ok(()),
        _ => Err(tonic::Status::permission_denied(
            "ListRecentSagas is the console's: only its link may call it",
        )),
    }
}

/// Who may retry a saga: only the gateway, which admits an operator with the owner's
/// `<ctx>:admin` scope. The services the spec lets call this one may not: they are
/// admitted for their own calls, not to decide what an operator decides.
pub fn may_retry(caller: Option<&crate::service_auth::Verified>) -> Result<(), tonic::Status> {
    match caller {
        Some(verified) if verified.caller == "gateway" => Ok(()),
        Some(verified) => Err(tonic::Status::permission_denied(format!(
            "RetrySaga is an operator's: `{}` may not call it, only the gateway (scope <owner>:admin)",
            verified.caller
        ))),
        None => Err(tonic::Status::permission_denied(
            "RetrySaga is an operator's: only the gateway may call it",
        )),
    }
}

/// The operator's retry of the instance `id` of the subject `aggregate_id`: a
/// `compensation_failed` one compensates again from where it stopped, with fresh attempts;
/// a `parked` one (its definition changed while it ran) is compensated from its last step,
/// once its recorded steps match the definition again (else it is parked again). Answers
/// the instance as it is then. A retry of an instance already compensating, or compensated
/// (a retry sent again after its answer was lost), changes nothing and answers it as it is.
/// NOT_FOUND when the subject has no such instance; FAILED_PRECONDITION for one that is
/// running or completed, which has nothing to compensate. An instance that is not retried
/// keeps its version, so the runner holding it is not fenced off.
pub async fn retry(
    pool: &PgPool,
    id: uuid::Uuid,
    aggregate_id: uuid::Uuid,
) -> Result<Summary, AppError> {
    let before: Option<String> = sqlx::query_scalar(
        "UPDATE saga s SET state = CASE WHEN s.state IN ('compensation_failed', 'parked') THEN 'compensating' ELSE s.state END, \
             step = CASE WHEN s.state = 'parked' THEN jsonb_array_length(s.steps) - 1 ELSE s.step END, \
             attempts = CASE WHEN s.state IN ('compensation_failed', 'parked') THEN 0 ELSE s.attempts END, \
             next_attempt_at = CASE WHEN s.state IN ('compensation_failed', 'parked') THEN now() ELSE s.next_attempt_at END, \
             version = CASE WHEN s.state IN ('compensation_failed', 'parked') THEN s.version + 1 ELSE s.version END, \
             updated_at = CASE WHEN s.state IN ('compensation_failed', 'parked') THEN now() ELSE s.updated_at END \
         FROM saga before WHERE s.id = $1 AND s.aggregate_id = $2 AND before.id = s.id RETURNING before.state",
    )
    .bind(id)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await?;
    match before.as_deref() {
        None => {
            return Err(AppError::NotFound(format!(
                "no saga {id} of {aggregate_id}"
            )));
        }
        Some(state @ ("compensation_failed" | "parked")) => {
            tracing::info!(%id, state, "saga retried by an operator")
        }
        Some("compensating" | "failing" | "compensated") => {}
        Some(other) => {
            return Err(AppError::Conflict(format!(
                "saga {id} is {other}; only a compensation_failed or parked saga can be retried"
            )));
        }
    }
    let listed = list(pool, aggregate_id).await?;
    listed
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| AppError::NotFound(format!("no saga {id} of {aggregate_id}")))
}

/// Refreshes `saga_in_flight`, `saga_compensation_failed` and `saga_parked` per saga from
/// the database at each scrape. Parked instances are reported under their own saga's name
/// even when this service no longer defines it (the spec removed it while they ran).
pub fn gauges(pool: PgPool, sagas: &'static [Definition]) -> crate::metrics::Refresh {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            let counts: Result<Vec<(String, i64, i64, i64)>, sqlx::Error> = sqlx::query_as(
                "SELECT saga_type, count(*) FILTER (WHERE state = ANY($1)), \
                     count(*) FILTER (WHERE state = 'compensation_failed'), count(*) FILTER (WHERE state = 'parked') \
                 FROM saga WHERE state = ANY($1) OR state IN ('compensation_failed', 'parked') GROUP BY saga_type",
            )
            .bind(State::RUNNABLE.as_slice())
            .fetch_all(&pool)
            .await;
            match counts {
                Ok(counts) => {
                    // Every saga is reported, at 0 when it has no such instance.
                    for definition in sagas {
                        let (running, failed, parked) = counts
                            .iter()
                            .find(|(name, ..)| name == definition.name)
                            .map_or((0, 0, 0), |(_, r, f, p)| (*r, *f, *p));
                        metrics::gauge!(SAGA_IN_FLIGHT, "saga" => definition.name)
                            .set(running as f64);
                        metrics::gauge!(SAGA_COMPENSATION_FAILED, "saga" => definition.name)
                            .set(failed as f64);
                        metrics::gauge!(SAGA_PARKED, "saga" => definition.name).set(parked as f64);
                    }
                    for (name, _, _, parked) in &counts {
                        if sagas.iter().all(|d| d.name != name) {
                            metrics::gauge!(SAGA_PARKED, "saga" => name.clone())
                                .set(*parked as f64);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot count sagas"),
            }
        })
    })
}

#[cfg(test)]
mod simulation;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_records_when_each_step_began_ended_and_was_undone() {
        let before = fresh(&DEFINITION);
        let mut tried = before.clone();
        tried.steps[0].status = StepStatus::Trying;
        stamp(&before, &mut tried, 1_000);
        assert_eq!(tried.steps[0].started_ms, Some(1_000));
        assert_eq!(
            tried.steps[1].started_ms, None,
            "an untouched step keeps no time"
        );
        let mut done = tried.clone();
        done.steps[0].status = StepStatus::Done;
        stamp(&tried, &mut done, 1_040);
        assert_eq!(
            (done.steps[0].started_ms, done.steps[0].finished_ms),
            (Some(1_000), Some(1_040))
        );
        // Refused at once, without a trying first: it began and ended then.
        let mut refused = done.clone();
        refused.steps[1].status = StepStatus::Refused;
        stamp(&done, &mut refused, 1_100);
        assert_eq!(
            (refused.steps[1].started_ms, refused.steps[1].finished_ms),
            (Some(1_100), Some(1_100))
        );
        let mut undone = refused.clone();
        undone.steps[0].status = StepStatus::Compensated;
        stamp(&refused, &mut undone, 2_000);
        assert_eq!(undone.steps[0].compensated_ms, Some(2_000));
        assert_eq!(
            undone.steps[0].finished_ms,
            Some(1_040),
            "undoing keeps when it was done"
        );
        // Recorded again unchanged (a retry of the same action): the times stay.
        let mut again = undone.clone();
        stamp(&undone, &mut again, 9_999);
        assert_eq!(again.steps, undone.steps);
    }

    pub(super) const STEPS: &[StepInfo] = &[
        StepInfo {
            label: "create payments",
            compensable: true,
        },
        StepInfo {
            label: "inventory.reserve",
            compensable: true,
        },
        StepInfo {
            label: "create shipping",
            compensable: false,
        },
    ];
    pub(super) const DEFINITION: Definition = Definition {
        name: "place_order",
        steps: STEPS,
        timeout: Duration::from_secs(30),
    };

    pub(super) fn config() -> SagaConfig {
        SagaConfig {
            lease: Duration::from_secs(30),
            step_timeout: Duration::from_secs(10),
            poll_every: Duration::from_millis(500),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            compensation_attempts: 3,
            die_after_step: None,
        }
    }

    pub(super) fn fresh(definition: &Definition) -> Instance {
        Instance {
            id: uuid::Uuid::nil(),
            saga_type: definition.name.into(),
            aggregate_id: uuid::Uuid::nil(),
            state: State::Running,
            step: 0,
            steps: definition
                .steps
                .iter()
                .map(|s| StepRecord::pending(s.label))
                .collect(),
            subject: Vec::new(),
            reason: None,
            attempts: 0,
            last_error: None,
            version: 1,
            expired: false,
            correlation_id: String::new(),
            traceparent: String::new(),
        }
    }

    /// Runs actions with the given outcomes for the calls they make (`Begin` and `Expire`
    /// make none and take no outcome) and returns every action taken.
    fn drive(mut instance: Instance, outcomes: Vec<Outcome>) -> (Instance, Vec<Action>) {
        let mut taken = Vec::new();
        let mut outcomes = outcomes.into_iter();
        loop {
            let action = action(&instance);
            let outcome = if action.calls() {
                match outcomes.next() {
                    Some(outcome) => outcome,
                    None => break,
                }
            } else if action == Action::None {
                break;
            } else {
                Ok(None)
            };
            taken.push(action);
            instance = apply(&instance, &DEFINITION, action, outcome, &config()).0;
        }
        (instance, taken)
    }

    fn refused() -> Outcome {
        Err(StepError::Refused("FailedPrecondition: no".into()))
    }

    fn down() -> Outcome {
        Err(StepError::Failed("Unavailable: down".into()))
    }

    #[test]
    fn every_step_then_on_success() {
        let (done, taken) = drive(
            fresh(&DEFINITION),
            vec![
                Ok(Some("p1".into())),
                Ok(None),
                Ok(Some("s1".into())),
                Ok(None),
            ],
        );
        assert_eq!(
            taken,
            [
                Action::Begin(0),
                Action::Forward(0),
                Action::Begin(1),
                Action::Forward(1),
                Action::Begin(2),
                Action::Forward(2),
                Action::Finish { success: true }
            ]
        );
        assert_eq!(done.state, State::Completed);
        assert_eq!(done.steps[0].result.as_deref(), Some("p1"));
        assert_eq!(done.steps[0].label.as_deref(), Some("create payments"));
        assert_eq!(action(&done), Action::None);
    }

    #[test]
    fn a_forward_call_is_made_only_after_its_step_is_recorded_as_trying() {
        let instance = fresh(&DEFINITION);
        assert_eq!(action(&instance), Action::Begin(0));
        assert!(!Action::Begin(0).calls());
        let (begun, wait) = apply(
            &instance,
            &DEFINITION,
            Action::Begin(0),
            Ok(None),
            &config(),
        );
        assert_eq!(
            (begun.steps[0].status, wait),
            (StepStatus::Trying, Duration::ZERO)
        );
        assert_eq!(action(&begun), Action::Forward(0));
    }

    #[test]
    fn a_refusal_compensates_the_completed_steps_in_reverse_then_on_failure() {
        let (instance, taken) = drive(
            fresh(&DEFINITION),
            vec![
                Ok(Some("p1".into())),
                Ok(None),
                refused(),
                Ok(None),
                Ok(None),
                Ok(None),
            ],
        );
        // The shipment was refused: the reservation, then the payment, are undone.
        let calls: Vec<Action> = taken.into_iter().filter(|a| a.calls()).collect();
        assert_eq!(
            calls,
            [
                Action::Forward(0),
                Action::Forward(1),
                Action::Forward(2),
                Action::Compensate(1),
                Action::Compensate(0),
                Action::Finish { success: false }
            ]
        );
        assert_eq!(instance.state, State::Compensated);
        let statuses: Vec<StepStatus> = instance.steps.iter().map(|s| s.status).collect();
        assert_eq!(
            statuses,
            [
                StepStatus::Compensated,
                StepStatus::Compensated,
                StepStatus::Refused
            ]
        );
        assert!(
            instance
                .reason
                .as_deref()
                .unwrap()
                .starts_with("step 3 (create shipping) refused"),
            "{:?}",
            instance.reason
        );
    }

    #[test]
    fn a_refused_first_step_has_nothing_to_undo() {
        let (instance, taken) = drive(fresh(&DEFINITION), vec![refused(), Ok(None)]);
        assert_eq!(
            taken,
            [
                Action::Begin(0),
                Action::Forward(0),
                Action::Finish { success: false }
            ]
        );
        assert_eq!(instance.state, State::Compensated);
    }

    #[test]
    fn an_outage_retries_the_same_step_with_backoff() {
        let mut instance = apply(
            &fresh(&DEFINITION),
            &DEFINITION,
            Action::Begin(0),
            Ok(None),
            &config(),
        )
        .0;
        let mut waits = Vec::new();
        for _ in 0..3 {
            assert_eq!(action(&instance), Action::Forward(0));
            let (next, wait) = apply(&instance, &DEFINITION, action(&instance), down(), &config());
            waits.push(wait);
            instance = next;
        }
        assert_eq!(
            (instance.state, instance.step, instance.attempts),
            (State::Running, 0, 3)
        );
        assert_eq!(instance.steps[0].status, StepStatus::Trying);
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(10)));
        let (instance, _) = apply(
            &instance,
            &DEFINITION,
            action(&instance),
            Ok(Some("p1".into())),
            &config(),
        );
        assert_eq!((instance.step, instance.attempts), (1, 0));
    }

    #[test]
    fn a_timeout_settles_the_step_in_doubt_before_compensating() {
        let (mut instance, _) = drive(fresh(&DEFINITION), vec![Ok(Some("p1".into())), down()]);
        instance.expired = true;
        // Expire, settle the reservation whose answer was lost (it had happened), undo it
        // and the payment, then on_failure.
        let (instance, taken) = drive(instance, vec![Ok(None), Ok(None), Ok(None), Ok(None)]);
        assert_eq!(
            taken,
            [
                Action::Expire,
                Action::Settle(1),
                Action::Compensate(1),
                Action::Compensate(0),
                Action::Finish { success: false }
            ]
        );
        assert_eq!(instance.state, State::Compensated);
        assert_eq!(instance.reason.as_deref(), Some("timed out after 30000 ms"));
    }

    /// Issue 27, bug 1: the runner died (or lost its lease) after step 2's call succeeded
    /// and before it recorded the outcome; the deadline passed before another runner
    /// claimed the instance. The step was recorded as `trying` before its call, so it is
    /// settled and compensated before the earlier step.
    #[test]
    fn an_expired_instance_with_an_unrecorded_current_step_settles_it_then_compensates_it_and_the_earlier_steps()
     {
        let (mut instance, taken) = drive(fresh(&DEFINITION), vec![Ok(Some("p1".into()))]);
        assert_eq!(
            taken.last(),
            Some(&Action::Begin(1)),
            "recorded before the call: {taken:?}"
        );
        // Forward(1) was called here and succeeded; the runner died before recording it.
        instance.expired = true;
        let (instance, taken) = drive(instance, vec![Ok(None), Ok(None), Ok(None), Ok(None)]);
        assert_eq!(
            taken,
            [
                Action::Expire,
                Action::Settle(1),
                Action::Compensate(1),
                Action::Compensate(0),
                Action::Finish { success: false }
            ]
        );
        let statuses: Vec<StepStatus> = instance.steps.iter().map(|s| s.status).collect();
        assert_eq!(
            statuses,
            [
                StepStatus::Compensated,
                StepStatus::Compensated,
                StepStatus::Pending
            ]
        );
    }

    #[test]
    fn a_step_never_sent_is_neither_settled_nor_compensated_after_the_deadline() {
        let (mut instance, _) = drive(fresh(&DEFINITION), vec![Ok(Some("p1".into()))]);
        // The deadline passed after step 1 was recorded and before step 2 was begun.
        instance.steps[1].status = StepStatus::Pending;
        instance.expired = true;
        let (instance, taken) = drive(instance, vec![Ok(None), Ok(None)]);
        assert_eq!(
            taken,
            [
                Action::Expire,
                Action::Compensate(0),
                Action::Finish { success: false }
            ]
        );
        assert_eq!(instance.steps[1].status, StepStatus::Pending);
    }

    #[test]
    fn a_step_in_doubt_that_turns_out_refused_is_not_compensated() {
        let (mut instance, _) = drive(fresh(&DEFINITION), vec![Ok(Some("p1".into())), down()]);
        instance.expired = true;
        let (instance, taken) = drive(instance, vec![refused(), Ok(None), Ok(None)]);
        assert_eq!(
            taken,
            [
                Action::Expire,
                Action::Settle(1),
                Action::Compensate(0),
                Action::Finish { success: false }
            ]
        );
        assert_eq!(instance.steps[1].status, StepStatus::Refused);
    }

    #[test]
    fn a_compensation_that_keeps_failing_waits_for_an_operator() {
        let (instance, _) = drive(fresh(&DEFINITION), vec![Ok(Some("p1".into())), refused()]);
        assert_eq!(action(&instance), Action::Compensate(0));
        let (instance, _) = drive(instance, vec![down(), refused(), down()]);
        assert_eq!(instance.state, State::CompensationFailed);
        assert_eq!(action(&instance), Action::None);
        // The operator's retry: compensating again with fresh attempts.
        let retried = Instance {
            state: State::Compensating,
            attempts: 0,
            ..instance
        };
        let (done, taken) = drive(retried, vec![Ok(None), Ok(None)]);
        assert_eq!(
            taken,
            [Action::Compensate(0), Action::Finish { success: false }]
        );
        assert_eq!(done.state, State::Compensated);
    }

    #[test]
    fn a_subject_that_refuses_on_success_has_its_steps_undone() {
        let (instance, taken) = drive(
            fresh(&DEFINITION),
            vec![
                Ok(Some("p1".into())),
                Ok(None),
                Ok(Some("s1".into())),
                refused(),
                Ok(None),
                Ok(None),
                Ok(None),
            ],
        );
        let calls: Vec<Action> = taken.into_iter().filter(|a| a.calls()).collect();
        assert_eq!(
            calls[3..],
            [
                Action::Finish { success: true },
                Action::Compensate(1),
                Action::Compensate(0),
                Action::Finish { success: false }
            ]
        );
        assert_eq!(instance.state, State::Compensated);
    }

    /// Issue 27, bug 2: a success used to release the lease (next attempt now) while the
    /// runner went on, so another replica claimed the instance and called the same step.
    #[test]
    fn the_lease_is_kept_while_the_runner_goes_on_and_released_when_it_stops() {
        let config = config();
        let begun = apply(
            &fresh(&DEFINITION),
            &DEFINITION,
            Action::Begin(0),
            Ok(None),
            &config,
        )
        .0;
        let (after_success, wait) =
            apply(&begun, &DEFINITION, Action::Forward(0), Ok(None), &config);
        assert_eq!(
            lease_after(&after_success, wait, &config),
            Lease {
                next_attempt_in: config.lease,
                keep: true
            }
        );
        let (after_outage, wait) = apply(&begun, &DEFINITION, Action::Forward(0), down(), &config);
        assert!(!wait.is_zero());
        assert_eq!(
            lease_after(&after_outage, wait, &config),
            Lease {
                next_attempt_in: wait,
                keep: false
            }
        );
        let (done, _) = drive(
            fresh(&DEFINITION),
            vec![Ok(None), Ok(None), Ok(None), Ok(None)],
        );
        assert!(!lease_after(&done, Duration::ZERO, &config).keep);
    }

    #[test]
    fn an_instance_whose_definition_changed_is_told_apart() {
        let instance = fresh(&DEFINITION);
        assert_eq!(DEFINITION.mismatch(&instance.steps), None);
        let shorter = Definition {
            name: "place_order",
            steps: &STEPS[..2],
            timeout: Duration::from_secs(30),
        };
        let why = shorter
            .mismatch(&instance.steps)
            .expect("a removed step is a change");
        assert!(
            why.contains("recorded 3 steps, the definition has 2"),
            "{why}"
        );
        const RENAMED: &[StepInfo] = &[
            StepInfo {
                label: "create payments",
                compensable: true,
            },
            StepInfo {
                label: "inventory.hold",
                compensable: true,
            },
            StepInfo {
                label: "create shipping",
                compensable: false,
            },
        ];
        let renamed = Definition {
            name: "place_order",
            steps: RENAMED,
            timeout: Duration::from_secs(30),
        };
        let why = renamed
            .mismatch(&instance.steps)
            .expect("a renamed step is a change");
        assert!(
            why.contains("step 2 was `inventory.reserve`, it is `inventory.hold` now"),
            "{why}"
        );
        // Instances started before steps carried their labels: only the count is compared.
        let unlabelled: Vec<StepRecord> = instance
            .steps
            .iter()
            .map(|s| StepRecord {
                label: None,
                ..s.clone()
            })
            .collect();
        assert_eq!(renamed.mismatch(&unlabelled), None);
        let stored: Vec<StepRecord> =
            serde_json::from_str(r#"[{"status":"done","result":"p1"},{"status":"pending"}]"#)
                .unwrap();
        assert!(DEFINITION.mismatch(&stored).is_some());
    }

    #[test]
    fn a_cursor_past_the_recorded_steps_does_not_panic() {
        let mut instance = fresh(&DEFINITION);
        instance.state = State::Compensating;
        instance.step = 7;
        normalize(&mut instance, &DEFINITION);
        assert_eq!(instance.state, State::Failing);
        instance.state = State::Running;
        instance.step = 9;
        assert_eq!(action(&instance), Action::None);
    }

    /// What `ListSagas` shows: a category, or the participant's own words for a refusal;
    /// never the transport's chain (it named the participant's address).
    #[test]
    fn a_failed_call_shows_its_category_and_a_refusal_its_participants_words() {
        use tonic::Status;
        let down = StepError::from(Status::unavailable(
            "error trying to connect: tcp connect error: 127.0.0.1:50051: Connection refused",
        ));
        assert_eq!(down.to_string(), "unavailable");
        let late = StepError::from(Status::deadline_exceeded(
            "Timeout expired after 2000 ms at 10.1.2.3",
        ));
        assert_eq!(late.to_string(), "deadline");
        let refused = StepError::from(Status::failed_precondition(
            "at most 10 units per reservation, not 11",
        ));
        assert_eq!(
            refused.to_string(),
            "refused: at most 10 units per reservation, not 11"
        );
        // As recorded on the instance.
        let begun = apply(
            &fresh(&DEFINITION),
            &DEFINITION,
            Action::Begin(0),
            Ok(None),
            &config(),
        )
        .0;
        let (failed, _) = apply(
            &begun,
            &DEFINITION,
            Action::Forward(0),
            Err(down),
            &config(),
        );
        assert_eq!(failed.last_error.as_deref(), Some("unavailable"));
        assert_eq!(failed.steps[0].error.as_deref(), Some("unavailable"));
    }

    #[test]
    fn only_the_gateway_may_retry_a_saga() {
        use crate::service_auth::Verified;
        let gateway = Verified {
            caller: "gateway".into(),
            user: Some("operator".into()),
        };
        assert!(may_retry(Some(&gateway)).is_ok());
        let participant = Verified {
            caller: "payments".into(),
            user: None,
        };
        assert_eq!(
            may_retry(Some(&participant)).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            may_retry(None).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn status_codes_split_into_refusals_and_failures() {
        use tonic::{Code, Status};
        for code in [
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::OutOfRange,
        ] {
            assert!(
                matches!(
                    StepError::from(Status::new(code, "x")),
                    StepError::Refused(_)
                ),
                "{code:?}"
            );
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
            Code::Aborted,
            Code::Unknown,
        ] {
            assert!(
                matches!(
                    StepError::from(Status::new(code, "x")),
                    StepError::Failed(_)
                ),
                "{code:?}"
            );
        }
    }
}
