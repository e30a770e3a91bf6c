//! A deterministic, seeded simulation of the saga runner: several runners over one
//! instance store, with the claim and record rules of the `saga` table; participants that
//! succeed, refuse, fail, lose their answers or answer late; runners that crash between a
//! call and its record, or stall until their lease has ended; deadlines that pass at any
//! point; operator retries. The runners decide with the real [`action`], [`apply`],
//! [`lease_after`] and [`lease_covers_call`]; only the I/O is modelled. Every history is
//! checked against the saga's guarantees (see [`History::violations`]); a failure prints
//! its seed and the shortest failing history, step by step.
//!
//! `SAGA_SIMULATION_HISTORIES` sets how many histories run (default 10,000) and
//! `SAGA_SIMULATION_SEED` replays one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::tests::{DEFINITION, fresh};
use super::*;

/// splitmix64: small, fast and the same everywhere, so a seed names one history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const LEASE_MS: u64 = 300;
const STEP_TIMEOUT_MS: u64 = 100;
const POLL_MS: u64 = 50;
/// After this, no more faults: participants answer, runners stay up, the operator retries
/// a stuck compensation; every history must then end by `END_MS`.
const CALM_MS: u64 = 8_000;
const END_MS: u64 = 20_000;
const RUNNERS: usize = 3;

fn sim_config() -> SagaConfig {
    SagaConfig {
        lease: Duration::from_millis(LEASE_MS),
        step_timeout: Duration::from_millis(STEP_TIMEOUT_MS),
        poll_every: Duration::from_millis(POLL_MS),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        compensation_attempts: 3,
        die_after_step: None,
    }
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// The `saga` table's row, and its rules: `claim` and `record` as their SQL does them.
struct Store {
    instance: Instance,
    deadline: u64,
    next_attempt_at: u64,
}

impl Store {
    /// `claim`: a runnable instance whose time has come is leased and its version bumped.
    fn claim(&mut self, now: u64) -> Option<Instance> {
        let runnable = State::RUNNABLE.contains(&self.instance.state.as_str());
        if !runnable || self.next_attempt_at > now {
            return None;
        }
        self.next_attempt_at = now + LEASE_MS;
        self.instance.version += 1;
        self.instance.expired = self.deadline <= now;
        Some(self.instance.clone())
    }

    /// `record`: stored only at the version the runner read; the next attempt from now.
    fn record(
        &mut self,
        next: &Instance,
        expected: i64,
        next_attempt_in: Duration,
        now: u64,
    ) -> Option<(i64, bool)> {
        if self.instance.version != expected {
            return None;
        }
        self.instance = Instance {
            version: expected + 1,
            expired: false,
            ..next.clone()
        };
        self.next_attempt_at = now + ms(next_attempt_in);
        Some((self.instance.version, self.deadline <= now))
    }

    /// `retry`: a `compensation_failed` instance compensates again, with fresh attempts.
    fn retry(&mut self, now: u64) -> bool {
        if self.instance.state != State::CompensationFailed {
            return false;
        }
        self.instance.state = State::Compensating;
        self.instance.attempts = 0;
        self.instance.version += 1;
        self.next_attempt_at = now;
        true
    }
}

/// What one call asks of a participant (or of the subject, for `Finish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Forward(usize),
    Compensate(usize),
    Finish(bool),
}

/// The participants' side: what each idempotency key did, and the effects in place.
#[derive(Default)]
struct World {
    /// Per key: the answer it gave the first time, replayed after.
    answers: BTreeMap<Call, Outcome>,
    /// Per step: how many times its forward effect happened, and whether it is in place.
    forward_effects: Vec<u32>,
    in_place: Vec<bool>,
    compensations: Vec<u32>,
    refuses: Vec<bool>,
    subject_refuses_success: bool,
    confirmed: u32,
    cancelled: u32,
    /// Broken promises seen while the history ran.
    violations: Vec<String>,
}

impl World {
    /// The participant takes a call: a known key replays its first answer.
    fn deliver(&mut self, call: Call) -> Outcome {
        if let Some(answer) = self.answers.get(&call) {
            return answer.clone();
        }
        let answer = match call {
            Call::Forward(step) if self.refuses[step] => {
                Err(StepError::Refused(format!("step {step} says no")))
            }
            Call::Forward(step) => {
                self.forward_effects[step] += 1;
                self.in_place[step] = true;
                Ok(Some(format!("result-{step}")))
            }
            Call::Compensate(step) => {
                if !self.answers.contains_key(&Call::Forward(step)) {
                    self.violations.push(format!(
                        "the compensation of step {step} reached its participant before the forward call it undoes was settled"
                    ));
                }
                self.in_place[step] = false;
                self.compensations[step] += 1;
                Ok(None)
            }
            Call::Finish(true) if self.subject_refuses_success => {
                Err(StepError::Refused("the subject changed".into()))
            }
            Call::Finish(true) => {
                self.confirmed += 1;
                Ok(None)
            }
            Call::Finish(false) => {
                self.cancelled += 1;
                Ok(None)
            }
        };
        self.answers.insert(call, answer.clone());
        answer
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A runner (the incarnation `epoch`) looks for work, or takes its next action.
    Wake {
        runner: usize,
        epoch: u64,
    },
    /// A call reaches its participant: even when its runner has crashed since, for the
    /// request was on its way.
    Deliver(u64),
    /// A call answers, or its timeout fires.
    Answer(u64),
    /// A runner records what its last action came to.
    Record {
        runner: usize,
        epoch: u64,
    },
    Restart(usize),
    OperatorRetry,
}

struct InFlight {
    runner: usize,
    epoch: u64,
    call: Call,
    action: Action,
    /// The answer as the runner will see it: None until delivered (then the participant's),
    /// or a failure the network made.
    answer: Option<Outcome>,
    lose_answer: bool,
}

#[derive(Default)]
struct Runner {
    /// Bumped at every restart: events of an earlier incarnation are ignored.
    epoch: u64,
    down: bool,
    /// The instance it holds and the time its lease runs to, by its own count.
    held: Option<(Instance, u64)>,
    /// Its call in flight.
    call: Option<u64>,
    /// An outcome waiting to be recorded.
    pending: Option<(Action, Outcome)>,
}

struct History {
    rng: Rng,
    now: u64,
    store: Store,
    world: World,
    runners: Vec<Runner>,
    calls: BTreeMap<u64, InFlight>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    next_call: u64,
    /// Calls whose window is still open: (runner, end of window).
    open_calls: Vec<(usize, u64)>,
    log: Vec<String>,
}

impl History {
    fn new(seed: u64) -> History {
        let mut rng = Rng(seed);
        let steps = DEFINITION.steps.len();
        let world = World {
            forward_effects: vec![0; steps],
            in_place: vec![false; steps],
            compensations: vec![0; steps],
            refuses: (0..steps).map(|_| rng.chance(12)).collect(),
            subject_refuses_success: rng.chance(5),
            ..World::default()
        };
        let deadline = rng.between(20, 2_000);
        let mut history = History {
            store: Store {
                instance: fresh(&DEFINITION),
                deadline,
                next_attempt_at: 0,
            },
            rng,
            now: 0,
            world,
            runners: (0..RUNNERS).map(|_| Runner::default()).collect(),
            calls: BTreeMap::new(),
            queue: BinaryHeap::new(),
            sequence: 0,
            next_call: 0,
            open_calls: Vec::new(),
            log: Vec::new(),
        };
        history.note(format!(
            "deadline at {deadline} ms; refusals {:?}; on_success refused: {}",
            history.world.refuses, history.world.subject_refuses_success
        ));
        for runner in 0..RUNNERS {
            let at = history.rng.between(0, POLL_MS);
            history.wake_at(at, runner);
        }
        let mut retry = 1_000;
        while retry < END_MS {
            history.at(retry, Event::OperatorRetry);
            retry += history.rng.between(500, 2_000);
        }
        history
    }

    fn at(&mut self, time: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((time, self.sequence, event)));
    }

    fn wake_at(&mut self, time: u64, runner: usize) {
        let epoch = self.runners[runner].epoch;
        self.at(time, Event::Wake { runner, epoch });
    }

    fn note(&mut self, line: String) {
        self.log.push(format!("{:>6} ms  {line}", self.now));
    }

    fn calm(&self) -> bool {
        self.now >= CALM_MS
    }

    fn current(&self, runner: usize, epoch: u64) -> bool {
        !self.runners[runner].down && self.runners[runner].epoch == epoch
    }

    fn run(mut self) -> History {
        while let Some(Reverse((time, _, event))) = self.queue.pop() {
            if time > END_MS {
                break;
            }
            self.now = time;
            match event {
                Event::Wake { runner, epoch } if self.current(runner, epoch) => self.wake(runner),
                Event::Record { runner, epoch } if self.current(runner, epoch) => {
                    self.record(runner)
                }
                Event::Wake { .. } | Event::Record { .. } => {}
                Event::Deliver(id) => self.deliver(id),
                Event::Answer(id) => self.answer(id),
                Event::Restart(r) => {
                    self.note(format!("runner {r} restarts"));
                    let epoch = self.runners[r].epoch + 1;
                    self.runners[r] = Runner {
                        epoch,
                        ..Runner::default()
                    };
                    self.wake_at(self.now, r);
                }
                Event::OperatorRetry => {
                    if self.store.retry(self.now) {
                        self.note("the operator retries the compensation".into());
                    }
                }
            }
        }
        self
    }

    fn crash(&mut self, r: usize, when: &str) {
        self.note(format!("runner {r} crashes {when}"));
        self.runners[r].down = true;
        let back = self.now + self.rng.between(1, 2 * LEASE_MS);
        self.at(back, Event::Restart(r));
    }

    /// How long a runner is held up (a paused process) before its next step: mostly not
    /// at all, sometimes up to twice the lease.
    fn stall(&mut self) -> u64 {
        if !self.calm() && self.rng.chance(3) {
            self.rng.between(1, 2 * LEASE_MS)
        } else {
            0
        }
    }

    fn let_go(&mut self, r: usize) {
        self.runners[r].held = None;
        self.wake_at(self.now + POLL_MS, r);
    }

    fn wake(&mut self, r: usize) {
        if self.runners[r].call.is_some() || self.runners[r].pending.is_some() {
            return;
        }
        let Some((instance, held_until)) = self.runners[r].held.clone() else {
            // Idle: claim, or poll again later.
            match self.store.claim(self.now) {
                Some(instance) => {
                    self.note(format!(
                        "runner {r} claims at version {} (expired {})",
                        instance.version, instance.expired
                    ));
                    self.runners[r].held = Some((instance, self.now + LEASE_MS));
                    let later = self.now + 1 + self.stall();
                    self.wake_at(later, r);
                }
                None => self.wake_at(self.now + POLL_MS, r),
            }
            return;
        };
        let action = action(&instance);
        if action == Action::None {
            return self.let_go(r);
        }
        if !action.calls() {
            self.runners[r].pending = Some((action, Ok(None)));
            return self.record_later(r);
        }
        if !lease_covers_call(
            Duration::from_millis(held_until.saturating_sub(self.now)),
            &sim_config(),
        ) {
            self.note(format!(
                "runner {r} lets go: its lease is too short for {action:?}"
            ));
            return self.let_go(r);
        }
        let call = match action {
            Action::Forward(s) | Action::Settle(s) => Call::Forward(s),
            Action::Compensate(s) => Call::Compensate(s),
            Action::Finish { success } => Call::Finish(success),
            Action::Begin(_) | Action::Expire | Action::None => unreachable!("makes no call"),
        };
        let now = self.now;
        self.open_calls.retain(|&(_, end)| end > now);
        if let Some(&(other, _)) = self.open_calls.iter().find(|&&(other, _)| other != r) {
            self.world.violations.push(format!(
                "runners {other} and {r} call steps of one instance at the same time"
            ));
        }
        self.next_call += 1;
        let id = self.next_call;
        // The network and the participant: how long, whether it arrives, whether the answer
        // comes back. The runner's timeout ends the call at STEP_TIMEOUT_MS whatever else.
        let faults = !self.calm();
        let unavailable = faults && self.rng.chance(10);
        let lose_answer = faults && self.rng.chance(10);
        let answer_in = if faults && self.rng.chance(10) {
            self.rng.between(STEP_TIMEOUT_MS / 2, STEP_TIMEOUT_MS * 2)
        } else {
            self.rng.between(1, STEP_TIMEOUT_MS / 2)
        };
        let ends = answer_in.min(STEP_TIMEOUT_MS);
        self.note(format!(
            "runner {r} calls {call:?} ({action:?}) as call {id}"
        ));
        self.open_calls.push((r, now + ends));
        let answer = unavailable.then(|| Err(StepError::Failed("unavailable".into())));
        let epoch = self.runners[r].epoch;
        self.calls.insert(
            id,
            InFlight {
                runner: r,
                epoch,
                call,
                action,
                answer,
                lose_answer,
            },
        );
        self.runners[r].call = Some(id);
        if !unavailable {
            let deliver_in = self.rng.between(0, ends);
            self.at(now + deliver_in, Event::Deliver(id));
        }
        self.at(now + ends, Event::Answer(id));
    }

    fn deliver(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id).map(|c| c.call) else {
            return;
        };
        let outcome = self.world.deliver(call);
        self.note(format!(
            "call {id} {call:?} reaches its participant: {outcome:?}"
        ));
        if let Some(in_flight) = self.calls.get_mut(&id) {
            in_flight.answer = Some(outcome);
        }
    }

    fn answer(&mut self, id: u64) {
        let Some(in_flight) = self.calls.remove(&id) else {
            return;
        };
        let r = in_flight.runner;
        if !self.current(r, in_flight.epoch) {
            return;
        }
        self.runners[r].call = None;
        let outcome = match in_flight.answer {
            Some(answer) if !in_flight.lose_answer => answer,
            Some(_) => Err(StepError::Failed("the answer was lost".into())),
            None => Err(StepError::Failed(format!(
                "deadline: no answer within {STEP_TIMEOUT_MS} ms"
            ))),
        };
        // The window a crash can hit: the call was made, its outcome not yet recorded.
        if !self.calm() && self.rng.chance(4) {
            return self.crash(
                r,
                &format!("after call {id} answered {outcome:?}, before recording it"),
            );
        }
        self.runners[r].pending = Some((in_flight.action, outcome));
        self.record_later(r);
    }

    fn record_later(&mut self, r: usize) {
        let at = self.now + 1 + self.stall();
        let epoch = self.runners[r].epoch;
        self.at(at, Event::Record { runner: r, epoch });
    }

    /// Applies an action's outcome and records it, as `advance` does.
    fn record(&mut self, r: usize) {
        let (Some((action, outcome)), Some((instance, _))) =
            (self.runners[r].pending.take(), self.runners[r].held.clone())
        else {
            return;
        };
        let config = sim_config();
        let (next, wait) = apply(&instance, &DEFINITION, action, outcome, &config);
        let lease = lease_after(&next, wait, &config);
        match self
            .store
            .record(&next, instance.version, lease.next_attempt_in, self.now)
        {
            Some((version, expired)) => {
                self.note(format!(
                    "runner {r} records {action:?}: {} at step {} {:?}, next attempt in {} ms",
                    next.state.as_str(),
                    next.step,
                    next.steps
                        .iter()
                        .map(|s| s.status.as_str())
                        .collect::<Vec<_>>(),
                    ms(lease.next_attempt_in),
                ));
                if lease.keep {
                    self.runners[r].held = Some((
                        Instance {
                            version,
                            expired,
                            ..next
                        },
                        self.now + LEASE_MS,
                    ));
                    let later = self.now + 1 + self.stall();
                    self.wake_at(later, r);
                } else {
                    self.let_go(r);
                }
            }
            None => {
                self.note(format!("runner {r} cannot record {action:?}: taken over"));
                self.let_go(r);
            }
        }
        if !self.calm() && self.rng.chance(2) {
            self.crash(r, "after a record");
        }
    }

    /// The saga's guarantees, checked once the history has ended.
    fn violations(&self) -> Vec<String> {
        let mut found = self.world.violations.clone();
        let world = &self.world;
        let instance = &self.store.instance;
        for (step, &count) in world.forward_effects.iter().enumerate() {
            if count > 1 {
                found.push(format!(
                    "step {step}'s forward effect happened {count} times"
                ));
            }
        }
        match instance.state {
            State::Completed => {
                if world.forward_effects.iter().any(|&n| n != 1)
                    || world.in_place.iter().any(|&p| !p)
                {
                    found.push(format!(
                        "completed, but the forward effects are {:?} and in place {:?}",
                        world.forward_effects, world.in_place
                    ));
                }
                if world.confirmed != 1 || world.cancelled != 0 {
                    found.push(format!(
                        "completed, but confirmed {} and cancelled {} times",
                        world.confirmed, world.cancelled
                    ));
                }
            }
            State::Compensated => {
                for (step, info) in DEFINITION.steps.iter().enumerate() {
                    if info.compensable && world.in_place[step] {
                        found.push(format!(
                            "compensated, but step {step}'s effect is still in place"
                        ));
                    }
                }
                if world.cancelled != 1 {
                    found.push(format!(
                        "compensated, but cancelled {} times",
                        world.cancelled
                    ));
                }
            }
            other => found.push(format!(
                "still {} at {END_MS} ms, although it has been calm since {CALM_MS} ms",
                other.as_str()
            )),
        }
        found
    }
}

fn histories() -> u64 {
    std::env::var("SAGA_SIMULATION_HISTORIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// Runs one seeded history; a panic in the runner's code is a violation too.
fn check(seed: u64) -> Result<(), (Vec<String>, Vec<String>)> {
    let outcome = std::panic::catch_unwind(|| {
        let history = History::new(seed).run();
        (history.violations(), history.log)
    });
    match outcome {
        Ok((violations, _)) if violations.is_empty() => Ok(()),
        Ok((violations, log)) => Err((violations, log)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            Err((
                vec![format!(
                    "the runner panicked: {}",
                    message.unwrap_or_default()
                )],
                Vec::new(),
            ))
        }
    }
}

#[test]
fn no_history_of_crashes_leases_and_deadlines_breaks_a_saga_guarantee() {
    let seeds: Vec<u64> = match std::env::var("SAGA_SIMULATION_SEED") {
        Ok(seed) => vec![seed.parse().expect("SAGA_SIMULATION_SEED is a number")],
        Err(_) => (0..histories()).collect(),
    };
    let mut failures: Vec<(u64, Vec<String>, Vec<String>)> = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for &seed in &seeds {
        if let Err((violations, log)) = check(seed) {
            for violation in &violations {
                // Counted by kind: the words before the first number.
                let kind: String = violation
                    .split(|c: char| c.is_ascii_digit())
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *kinds.entry(kind).or_default() += 1;
            }
            failures.push((seed, violations, log));
        }
    }
    if let Some((seed, violations, log)) = failures.iter().min_by_key(|(_, _, log)| log.len()) {
        panic!(
            "{} of {} histories broke a guarantee ({kinds:?}).\nThe shortest, seed {seed} \
             (SAGA_SIMULATION_SEED={seed} replays it):\n  {}\n{}",
            failures.len(),
            seeds.len(),
            violations.join("\n  "),
            log.join("\n")
        );
    }
}

#[test]
fn the_simulation_sees_every_outcome() {
    // A simulation that never reaches a state proves nothing about it.
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    for seed in 0..500 {
        let history = History::new(seed).run();
        *seen
            .entry(history.store.instance.state.as_str())
            .or_default() += 1;
        if history.log.iter().any(|l| l.contains("crashes after call")) {
            *seen
                .entry("crash between a call and its record")
                .or_default() += 1;
        }
        if history
            .log
            .iter()
            .any(|l| l.contains("claims") && l.contains("expired true"))
        {
            *seen.entry("a claim after the deadline").or_default() += 1;
        }
        if history.log.iter().any(|l| l.contains("operator retries")) {
            *seen.entry("an operator's retry").or_default() += 1;
        }
        if history.log.iter().any(|l| l.contains("taken over")) {
            *seen.entry("a record fenced off").or_default() += 1;
        }
    }
    for wanted in [
        "completed",
        "compensated",
        "crash between a call and its record",
        "a claim after the deadline",
        "an operator's retry",
        "a record fenced off",
    ] {
        assert!(
            seen.contains_key(wanted),
            "no history had `{wanted}`: {seen:?}"
        );
    }
}
