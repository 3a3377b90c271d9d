//! The job domain: the state machine, what an attempt's outcome means for the job, and
//! the run-time estimate behind `Retry-After`. Pure logic: no HTTP, no SQL, no processes.

use std::time::Duration;

pub use batchgate_protocol::{JobError, JobState, Progress};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::tools::RetryPolicy;

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    /// The caller that created it: an API key's id, empty for the anonymous caller.
    pub owner: String,
    /// The owner's tier when the job was submitted (metrics and usage).
    pub tier: String,
    /// Higher runs first (from the tier).
    pub priority: i32,
    /// How long the job's data is kept once it has finished.
    pub retention: Duration,
    pub tool: String,
    pub tool_version: u32,
    pub state: JobState,
    pub params: Map<String, Value>,
    pub inputs: Vec<StoredInput>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The fencing token: the number of the current (or last) attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_until: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    pub progress: Option<Progress>,
    pub error: Option<JobError>,
    pub outputs: Vec<StoredOutput>,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    /// Set when the job's data was deleted (retention or `DELETE` of a finished job).
    pub purged_at: Option<DateTime<Utc>>,
    /// Where the current attempt's program can be found again by another worker (an
    /// executor's own reference, e.g. a Slurm job id); see `JobStore::set_executor_ref`.
    pub executor_ref: Option<String>,
}

/// What a submission decides about a new job; `Job::queued` adds the rest.
#[derive(Debug, Clone)]
pub struct Submission {
    pub owner: String,
    pub tier: String,
    pub priority: i32,
    pub retention: Duration,
    pub tool: String,
    pub tool_version: u32,
    pub max_attempts: u32,
    pub params: Map<String, Value>,
    pub inputs: Vec<StoredInput>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
}

impl Job {
    /// A job just submitted: queued, due `now`, no attempt yet.
    pub fn queued(id: Uuid, submission: Submission, now: DateTime<Utc>) -> Job {
        let Submission {
            owner,
            tier,
            priority,
            retention,
            tool,
            tool_version,
            max_attempts,
            params,
            inputs,
            idempotency_key,
            request_hash,
        } = submission;
        Job {
            id,
            owner,
            tier,
            priority,
            retention,
            tool,
            tool_version,
            state: JobState::Queued,
            params,
            inputs,
            created_at: now,
            started_at: None,
            finished_at: None,
            expires_at: None,
            attempt: 0,
            max_attempts,
            lease_until: None,
            run_after: now,
            progress: None,
            error: None,
            outputs: Vec::new(),
            cancel_requested: false,
            idempotency_key,
            request_hash,
            purged_at: None,
            executor_ref: None,
        }
    }
}

/// An input file of a job, as staged at submit time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInput {
    pub name: String,
    pub size: u64,
}

/// An output of the winning attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOutput {
    pub name: String,
    pub media_type: String,
    pub size: u64,
}

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The job was created, or its state or attempt changed.
    State,
    /// A cancel was asked for while it runs.
    CancelRequested,
    /// Only its progress changed.
    Progress,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::CancelRequested => "cancel-requested",
            EventKind::Progress => "progress",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        [
            EventKind::State,
            EventKind::CancelRequested,
            EventKind::Progress,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// One entry of a job's event log: the job as it was after one change. Recorded by the
/// store with the change itself, numbered by `seq` (increasing over all jobs, never
/// reused), so a reader resumes after the last `seq` it saw without losing one.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub seq: u64,
    pub job_id: Uuid,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    pub state: JobState,
    pub attempt: u32,
    pub progress: Option<Progress>,
    pub error: Option<JobError>,
    pub cancel_requested: bool,
}

/// The current time at the precision the stores keep (milliseconds), so that a job
/// reads back exactly as it was written.
pub fn now() -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .single()
        .expect("the current time is representable")
}

/// The lifecycle: which state changes exist. The stores enforce it in the `WHERE` clauses
/// of their updates; the store conformance suite checks what each store does against it.
pub fn can_transition(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        (Queued, Running)
            | (Queued, Canceled)
            | (Running, Succeeded)
            | (Running, Failed)
            | (Running, Canceled)
            // a lost or retried attempt goes back to the queue
            | (Running, Queued)
    )
}

/// How one attempt ended, as seen by the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded,
    /// The program ran and failed (exit status, signal, missing or bad output…).
    ProgramFailed(JobError),
    TimedOut(JobError),
    Canceled,
    /// The platform failed (storage, staging, spawning resources): not the program's fault.
    Infrastructure(String),
}

/// What to do with the job after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Finish {
        state: JobState,
        error: Option<JobError>,
    },
    Retry {
        delay: Duration,
        error: JobError,
    },
}

/// Decides the job's fate after `attempt` (1-based) ended with `outcome`. `jitter` in
/// [0, 1) spreads retries of many jobs apart.
pub fn decide(
    outcome: AttemptOutcome,
    attempt: u32,
    policy: &RetryPolicy,
    jitter: f64,
) -> Decision {
    let attempts_left = attempt < policy.max_attempts;
    let retry = |error: JobError| Decision::Retry {
        delay: backoff(policy.backoff, attempt, jitter),
        error,
    };
    match outcome {
        AttemptOutcome::Succeeded => Decision::Finish {
            state: JobState::Succeeded,
            error: None,
        },
        AttemptOutcome::Canceled => Decision::Finish {
            state: JobState::Canceled,
            error: None,
        },
        AttemptOutcome::ProgramFailed(error) => {
            let retryable = error
                .exit_code
                .is_some_and(|code| policy.on_exit_codes.contains(&code))
                || error
                    .signal
                    .is_some_and(|signal| policy.on_signals.contains(&signal));
            if retryable && attempts_left {
                retry(error)
            } else {
                Decision::Finish {
                    state: JobState::Failed,
                    error: Some(error),
                }
            }
        }
        AttemptOutcome::TimedOut(error) => {
            if policy.on_timeout && attempts_left {
                retry(error)
            } else {
                Decision::Finish {
                    state: JobState::Failed,
                    error: Some(error),
                }
            }
        }
        AttemptOutcome::Infrastructure(message) => {
            let error = JobError {
                code: "infrastructure".into(),
                message: format!("the platform failed while running the job: {message}"),
                exit_code: None,
                signal: None,
                stderr_tail: None,
            };
            if attempts_left {
                retry(error)
            } else {
                Decision::Finish {
                    state: JobState::Failed,
                    error: Some(JobError {
                        message: format!("{} (after {attempt} attempts)", error.message),
                        ..error
                    }),
                }
            }
        }
    }
}

/// Exponential backoff: `base · 2^(attempt-1)`, capped at five minutes, then scaled by
/// a jitter factor in [0.5, 1.5).
pub fn backoff(base: Duration, attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let raw = base
        .saturating_mul(1 << exponent)
        .min(Duration::from_secs(300));
    raw.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// The longest delay `backoff` gives (300 s with the largest jitter): a retry due later
/// than this was scheduled by a clock that ran ahead.
pub const MAX_BACKOFF: Duration = Duration::from_secs(450);

/// Estimates the seconds until a job is worth polling again.
///
/// `typical_run` is the tool's recent run time, `queued_ahead` the jobs before this one,
/// `workers` how many run at once, `running_for` how long this job has been running.
pub fn retry_after(
    state: JobState,
    typical_run: Duration,
    queued_ahead: u64,
    workers: usize,
    running_for: Duration,
    max: Duration,
) -> Duration {
    let estimate = match state {
        JobState::Queued => {
            let rounds = queued_ahead / workers.max(1) as u64 + 1;
            typical_run
                .saturating_mul(rounds as u32)
                .saturating_add(typical_run)
        }
        JobState::Running => typical_run.saturating_sub(running_for),
        _ => Duration::ZERO,
    };
    // Whole seconds, at least one (the header has no fractions), at most `max`.
    let seconds = estimate
        .as_secs_f64()
        .ceil()
        .max(1.0)
        .min(max.as_secs_f64().max(1.0));
    Duration::from_secs(seconds as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, on_exit_codes: Vec<i32>, on_timeout: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            on_exit_codes,
            on_signals: vec![11],
            on_timeout,
            backoff: Duration::from_secs(1),
        }
    }

    fn killed_by(signal: i32) -> JobError {
        JobError {
            exit_code: None,
            signal: Some(signal),
            ..program_error(0)
        }
    }

    fn program_error(exit_code: i32) -> JobError {
        JobError {
            code: "program-exit-status".into(),
            message: "exit".into(),
            exit_code: Some(exit_code),
            signal: None,
            stderr_tail: None,
        }
    }

    #[test]
    fn transitions_follow_the_lifecycle() {
        use JobState::*;
        let allowed = [
            (Queued, Running),
            (Queued, Canceled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Canceled),
            (Running, Queued),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                assert_eq!(
                    can_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
        for terminal in [Succeeded, Failed, Canceled] {
            assert!(JobState::ALL
                .iter()
                .all(|to| !can_transition(terminal, *to)));
        }
    }

    #[test]
    fn decisions() {
        let finish_failed = |d: &Decision| {
            matches!(
                d,
                Decision::Finish {
                    state: JobState::Failed,
                    ..
                }
            )
        };
        let is_retry = |d: &Decision| matches!(d, Decision::Retry { .. });
        type Case = (AttemptOutcome, u32, RetryPolicy, fn(&Decision) -> bool);
        let table: Vec<Case> = vec![
            (
                AttemptOutcome::ProgramFailed(program_error(2)),
                1,
                policy(3, vec![], false),
                finish_failed,
            ),
            (
                AttemptOutcome::ProgramFailed(program_error(75)),
                1,
                policy(3, vec![75], false),
                is_retry,
            ),
            (
                AttemptOutcome::ProgramFailed(program_error(75)),
                3,
                policy(3, vec![75], false),
                finish_failed,
            ),
            // A signal death has no exit code: `on_signals` (11 here) names it.
            (
                AttemptOutcome::ProgramFailed(killed_by(11)),
                1,
                policy(3, vec![139], false),
                is_retry,
            ),
            (
                AttemptOutcome::ProgramFailed(killed_by(7)),
                1,
                policy(3, vec![135], false),
                finish_failed,
            ),
            (
                AttemptOutcome::TimedOut(program_error(0)),
                1,
                policy(3, vec![], false),
                finish_failed,
            ),
            (
                AttemptOutcome::TimedOut(program_error(0)),
                1,
                policy(3, vec![], true),
                is_retry,
            ),
            (
                AttemptOutcome::Infrastructure("disk".into()),
                2,
                policy(3, vec![], false),
                is_retry,
            ),
            (
                AttemptOutcome::Infrastructure("disk".into()),
                3,
                policy(3, vec![], false),
                finish_failed,
            ),
        ];
        for (outcome, attempt, policy, expect) in table {
            let decision = decide(outcome.clone(), attempt, &policy, 0.5);
            assert!(
                expect(&decision),
                "{outcome:?} attempt {attempt}: {decision:?}"
            );
        }
        assert_eq!(
            decide(AttemptOutcome::Succeeded, 1, &policy(1, vec![], false), 0.0),
            Decision::Finish {
                state: JobState::Succeeded,
                error: None
            }
        );
        assert_eq!(
            decide(AttemptOutcome::Canceled, 1, &policy(1, vec![], false), 0.0),
            Decision::Finish {
                state: JobState::Canceled,
                error: None
            }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(base, 2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(base, 40, 0.5), Duration::from_secs(300));
    }

    #[test]
    fn retry_after_estimates() {
        let second = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(
            retry_after(JobState::Queued, second * 2, 4, 2, Duration::ZERO, max),
            second * 8
        );
        assert_eq!(
            retry_after(JobState::Running, second * 10, 0, 2, second * 3, max),
            second * 7
        );
        assert_eq!(
            retry_after(JobState::Running, second, 0, 2, second * 30, max),
            second
        );
        assert_eq!(
            retry_after(
                JobState::Queued,
                Duration::from_millis(10),
                0,
                1,
                Duration::ZERO,
                max
            ),
            second
        );
        assert_eq!(
            retry_after(JobState::Queued, second * 100, 50, 1, Duration::ZERO, max),
            max
        );
    }
}
