//! The conformance suite every `JobStore` must pass. Each backend's test module calls
//! `conformance!` with a constructor returning a fresh, empty store.

use chrono::Utc;
use serde_json::Map;
use uuid::Uuid;

use super::*;
use crate::jobs::{StoredInput, StoredOutput};

pub fn new_job(tool: &str, key: Option<&str>) -> Job {
    let now = crate::jobs::now();
    Job {
        id: Uuid::now_v7(),
        owner: "alice".into(),
        tier: "free".into(),
        priority: 0,
        retention: std::time::Duration::from_secs(60),
        tool: tool.into(),
        tool_version: 1,
        state: JobState::Queued,
        params: Map::new(),
        inputs: vec![StoredInput {
            name: "data".into(),
            size: 3,
        }],
        created_at: now,
        started_at: None,
        finished_at: None,
        expires_at: None,
        attempt: 0,
        max_attempts: 2,
        lease_until: None,
        run_after: now,
        progress: None,
        error: None,
        outputs: vec![],
        cancel_requested: false,
        idempotency_key: key.map(str::to_owned),
        request_hash: key.map(|_| "hash".to_owned()),
        purged_at: None,
        executor_ref: None,
    }
}

pub fn completion(state: JobState) -> Completion {
    Completion {
        state,
        error: None,
        outputs: vec![StoredOutput {
            name: "out".into(),
            media_type: "text/plain".into(),
            size: 1,
        }],
        finished_at: Utc::now(),
        expires_at: None,
    }
}

/// Asserts that the states a job went through follow the domain's lifecycle.
pub fn assert_lifecycle(states: &[JobState]) {
    for pair in states.windows(2) {
        assert!(
            crate::jobs::can_transition(pair[0], pair[1]),
            "the store moved a job from {} to {}",
            pair[0],
            pair[1]
        );
    }
}

macro_rules! conformance {
    (#[$gate:meta] ; $make:expr) => {
        conformance!(@gated [$gate] $make);
    };
    (@gated [$($gate:meta)?] $make:expr) => {
        /// A row the store cannot read is `Corrupt` (a 500, not "try again") on every
        /// backend: one classification.
        #[tokio::test]
        $(#[$gate])?
        async fn an_unreadable_row_is_corrupt_not_unavailable() {
            let store = $make;
            let job = crate::store::tests::new_job("t", None);
            store.insert(&job, &Admission::default()).await.unwrap();
            store.damage_for_test(job.id).await;
            let error = store.get(job.id).await.unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
            assert!(!error.is_retryable());
        }

        #[tokio::test]

        $(#[$gate])?
        async fn insert_get_and_idempotency() {
            let store = $make;
            let job = crate::store::tests::new_job("t", Some("k1"));
            assert!(matches!(
                store.insert(&job, &Admission::default()).await.unwrap(),
                Inserted::Created
            ));
            assert_eq!(store.get(job.id).await.unwrap().unwrap(), job);
            let again = crate::store::tests::new_job("t", Some("k1"));
            match store.insert(&again, &Admission::default()).await.unwrap() {
                Inserted::Existing(existing) => assert_eq!(existing.id, job.id),
                other => panic!("the key was used twice: {other:?}"),
            }
            assert!(store.get(again.id).await.unwrap().is_none());
            assert!(store.get(uuid::Uuid::now_v7()).await.unwrap().is_none());
        }

        /// The typical run time behind `Retry-After` is the median of the tool's recent
        /// runs: one job that ran for minutes does not send every client away for minutes.
        #[tokio::test]
        $(#[$gate])?
        async fn the_typical_run_time_is_the_median_of_recent_runs() {
            let store = $make;
            assert_eq!(store.recent_run_time("rt", 1).await.unwrap(), None);
            // Due jobs: their run_after (their creation) is before the claim's now.
            let start = chrono::Utc::now() + chrono::Duration::seconds(1);
            for seconds in [2, 3, 2, 600] {
                let job = crate::store::tests::new_job("rt", None);
                store.insert(&job, &Admission::default()).await.unwrap();
                let lease = start + chrono::Duration::seconds(900);
                let claimed = store.claim(start, lease, &[]).await.unwrap().unwrap();
                let mut done = crate::store::tests::completion(JobState::Succeeded);
                done.finished_at = start + chrono::Duration::seconds(seconds);
                assert!(store.complete(claimed.id, 1, &done).await.unwrap());
            }
            // The cache keeps an answer for up to a second.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            let typical = store.recent_run_time("rt", 1).await.unwrap().unwrap();
            assert!(
                (2.4..2.6).contains(&typical.as_secs_f64()),
                "{typical:?}, not the mean of 151 s"
            );
        }

        #[tokio::test]

        $(#[$gate])?
        async fn claim_is_fifo_exclusive_and_fenced() {
            let store = $make;
            let first = crate::store::tests::new_job("t", None);
            let second = crate::store::tests::new_job("t", None);
            store.insert(&first, &Admission::default()).await.unwrap();
            store.insert(&second, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            let lease = now + chrono::Duration::seconds(30);
            let claimed = store.claim(now, lease, &[]).await.unwrap().unwrap();
            assert_eq!(
                (claimed.id, claimed.attempt, claimed.state),
                (first.id, 1, JobState::Running)
            );
            let next = store.claim(now, lease, &[]).await.unwrap().unwrap();
            assert_eq!(next.id, second.id);
            assert!(store.claim(now, lease, &[]).await.unwrap().is_none());

            // A stale attempt number changes nothing.
            let done = crate::store::tests::completion(JobState::Succeeded);
            assert!(!store.complete(first.id, 2, &done).await.unwrap());
            assert!(store.complete(first.id, 1, &done).await.unwrap());
            assert!(
                !store.complete(first.id, 1, &done).await.unwrap(),
                "finishes exactly once"
            );
            let finished = store.get(first.id).await.unwrap().unwrap();
            assert_eq!(finished.state, JobState::Succeeded);
            crate::store::tests::assert_lifecycle(&[first.state, claimed.state, finished.state]);
            assert_eq!(finished.outputs.len(), 1);
            assert_eq!(
                store.heartbeat(first.id, 1, lease, None).await.unwrap(),
                Heartbeat::Lost
            );
        }

        #[tokio::test]

        $(#[$gate])?
        async fn claim_skips_excluded_tools_and_future_jobs() {
            let store = $make;
            let busy = crate::store::tests::new_job("busy", None);
            let mut later = crate::store::tests::new_job("t", None);
            later.run_after = chrono::Utc::now() + chrono::Duration::seconds(60);
            store.insert(&busy, &Admission::default()).await.unwrap();
            store.insert(&later, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            let lease = now + chrono::Duration::seconds(30);
            assert!(store
                .claim(now, lease, &["busy@1".to_string()])
                .await
                .unwrap()
                .is_none());
            assert_eq!(
                store.claim(now, lease, &[]).await.unwrap().unwrap().id,
                busy.id
            );
        }

        #[tokio::test]

        $(#[$gate])?
        async fn expired_leases_are_retried_then_failed() {
            let store = $make;
            let job = crate::store::tests::new_job("t", None);
            store.insert(&job, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            let short = now + chrono::Duration::milliseconds(1);
            let later = now + chrono::Duration::seconds(1);
            let first = store.claim(now, short, &[]).await.unwrap().unwrap();
            assert_eq!(store.recover_expired_leases(now).await.unwrap(), 0);
            assert_eq!(store.recover_expired_leases(later).await.unwrap(), 1);
            let requeued = store.get(job.id).await.unwrap().unwrap();
            assert_eq!(requeued.state, JobState::Queued);
            assert_eq!(requeued.error.unwrap().code, "worker-lost");
            // The stale first attempt can no longer complete.
            let done = crate::store::tests::completion(JobState::Succeeded);
            assert!(!store.complete(job.id, 1, &done).await.unwrap());

            let second = store
                .claim(later, later + chrono::Duration::milliseconds(1), &[])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(second.attempt, 2);
            let much_later = later + chrono::Duration::seconds(1);
            assert_eq!(store.recover_expired_leases(much_later).await.unwrap(), 1);
            let failed = store.get(job.id).await.unwrap().unwrap();
            assert_eq!(failed.state, JobState::Failed, "max_attempts is 2");
            crate::store::tests::assert_lifecycle(&[
                job.state,
                first.state,
                requeued.state,
                second.state,
                failed.state,
            ]);
            assert!(failed.finished_at.is_some());
        }

        #[tokio::test]

        $(#[$gate])?
        async fn executor_ref_survives_takeovers_and_is_fenced() {
            let store = $make;
            let mut job = crate::store::tests::new_job("t", None);
            job.max_attempts = 5;
            store.insert(&job, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            let short = now + chrono::Duration::milliseconds(1);
            let later = now + chrono::Duration::seconds(1);
            store.claim(now, short, &[]).await.unwrap().unwrap();
            assert!(store
                .set_executor_ref(job.id, 1, Some("slurm 41"))
                .await
                .unwrap());
            // A lost worker: the next attempt is told where the program still runs.
            assert_eq!(store.recover_expired_leases(later).await.unwrap(), 1);
            let second = store
                .claim(later, later + chrono::Duration::seconds(60), &[])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(second.attempt, 2);
            assert_eq!(second.executor_ref.as_deref(), Some("slurm 41"));
            // The stale attempt cannot overwrite it.
            assert!(!store
                .set_executor_ref(job.id, 1, Some("slurm 7"))
                .await
                .unwrap());
            // A hand-back (requeue) keeps it too; clearing it is the owner's decision.
            let stopped = crate::jobs::JobError {
                code: "worker-stopped".into(),
                message: "m".into(),
                exit_code: None,
                signal: None,
                stderr_tail: None,
            };
            assert!(store.requeue(job.id, 2, later, &stopped).await.unwrap());
            let third = store
                .claim(later, later + chrono::Duration::seconds(60), &[])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(third.executor_ref.as_deref(), Some("slurm 41"));
            let events_before = store.events(job.id, 0, 100).await.unwrap().len();
            assert!(store.set_executor_ref(job.id, 3, None).await.unwrap());
            assert_eq!(store.get(job.id).await.unwrap().unwrap().executor_ref, None);
            // Not an event: nobody watching the job sees the executor's bookkeeping.
            assert_eq!(
                store.events(job.id, 0, 100).await.unwrap().len(),
                events_before
            );
        }

        #[tokio::test]

        $(#[$gate])?
        async fn heartbeat_renews_and_reports_cancel() {
            let store = $make;
            let job = crate::store::tests::new_job("t", None);
            store.insert(&job, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            store
                .claim(now, now + chrono::Duration::seconds(1), &[])
                .await
                .unwrap()
                .unwrap();
            let progress = Progress {
                percent: Some(40.0),
                message: Some("half".into()),
            };
            let renewed = now + chrono::Duration::seconds(60);
            assert_eq!(
                store
                    .heartbeat(job.id, 1, renewed, Some(&progress))
                    .await
                    .unwrap(),
                Heartbeat::Held {
                    cancel_requested: false
                }
            );
            assert_eq!(
                store
                    .recover_expired_leases(now + chrono::Duration::seconds(5))
                    .await
                    .unwrap(),
                0
            );
            assert_eq!(
                store.get(job.id).await.unwrap().unwrap().progress,
                Some(progress)
            );
            let flagged = store.request_cancel(job.id, now).await.unwrap().unwrap();
            assert_eq!(
                (flagged.state, flagged.cancel_requested),
                (JobState::Running, true)
            );
            assert_eq!(
                store.heartbeat(job.id, 1, renewed, None).await.unwrap(),
                Heartbeat::Held {
                    cancel_requested: true
                }
            );
        }

        #[tokio::test]

        $(#[$gate])?
        async fn every_change_is_logged_once_in_order_and_wakes_subscribers() {
            use crate::jobs::EventKind;
            let store = $make;
            let job = crate::store::tests::new_job("t", None);
            let other = crate::store::tests::new_job("t", None);
            let mut woken = store.changes().subscribe(job.id);
            store.insert(&job, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            let lease = now + chrono::Duration::seconds(60);
            store.claim(now, lease, &[]).await.unwrap().unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(1), woken.changed())
                .await
                .expect("a claim wakes the job's subscribers");
            let progress = Progress {
                percent: Some(10.0),
                message: None,
            };
            store
                .heartbeat(job.id, 1, lease, Some(&progress))
                .await
                .unwrap();
            // The same progress again, and a heartbeat without any: no event.
            store
                .heartbeat(job.id, 1, lease, Some(&progress))
                .await
                .unwrap();
            store.heartbeat(job.id, 1, lease, None).await.unwrap();
            store.request_cancel(job.id, now).await.unwrap();
            let error = crate::store::lease_lost_error(1, false);
            store.requeue(job.id, 1, now, &error).await.unwrap();
            store.claim(now, lease, &[]).await.unwrap().unwrap();
            store
                .complete(
                    job.id,
                    2,
                    &crate::store::tests::completion(JobState::Succeeded),
                )
                .await
                .unwrap();
            // A stale attempt's completion changes nothing, so it logs nothing.
            store
                .complete(
                    job.id,
                    1,
                    &crate::store::tests::completion(JobState::Failed),
                )
                .await
                .unwrap();
            store.insert(&other, &Admission::default()).await.unwrap();
            let events = store.events(job.id, 0, 100).await.unwrap();
            let p = Some(progress);
            let seen: Vec<_> = events
                .iter()
                .map(|e| {
                    (
                        e.kind,
                        e.state,
                        e.attempt,
                        e.progress.clone(),
                        e.cancel_requested,
                    )
                })
                .collect();
            assert_eq!(
                seen,
                vec![
                    (EventKind::State, JobState::Queued, 0, None, false),
                    (EventKind::State, JobState::Running, 1, None, false),
                    (EventKind::Progress, JobState::Running, 1, p.clone(), false),
                    (
                        EventKind::CancelRequested,
                        JobState::Running,
                        1,
                        p.clone(),
                        true
                    ),
                    (EventKind::State, JobState::Queued, 1, p.clone(), true),
                    (EventKind::State, JobState::Running, 2, None, true),
                    (EventKind::State, JobState::Succeeded, 2, None, false),
                ]
            );
            assert!(events.windows(2).all(|pair| pair[0].seq < pair[1].seq));
            assert!(events.iter().all(|e| e.job_id == job.id));
            assert_eq!(
                events[4].error.as_ref().map(|e| e.code.as_str()),
                Some("worker-lost")
            );
            // Resuming after an event gives exactly the rest.
            let rest = store.events(job.id, events[2].seq, 100).await.unwrap();
            assert_eq!(rest, events[3..].to_vec());
            assert_eq!(
                store.events(job.id, events[6].seq, 100).await.unwrap(),
                vec![]
            );
            assert_eq!(store.events(other.id, 0, 100).await.unwrap().len(), 1);
            // Purging deletes the log with the data.
            assert!(store.mark_purged(job.id, now).await.unwrap());
            assert_eq!(store.events(job.id, 0, 100).await.unwrap(), vec![]);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn cancel_of_queued_is_immediate_and_purge_needs_terminal() {
            let store = $make;
            let job = crate::store::tests::new_job("t", None);
            store.insert(&job, &Admission::default()).await.unwrap();
            let now = chrono::Utc::now();
            assert!(
                !store.mark_purged(job.id, now).await.unwrap(),
                "never purge an unfinished job"
            );
            let canceled = store.request_cancel(job.id, now).await.unwrap().unwrap();
            assert_eq!(canceled.state, JobState::Canceled);
            crate::store::tests::assert_lifecycle(&[job.state, canceled.state]);
            assert!(store.claim(now, now, &[]).await.unwrap().is_none());
            assert!(store.mark_purged(job.id, now).await.unwrap());
            assert!(store
                .get(job.id)
                .await
                .unwrap()
                .unwrap()
                .purged_at
                .is_some());
            assert!(store
                .request_cancel(uuid::Uuid::now_v7(), now)
                .await
                .unwrap()
                .is_none());
        }

        #[tokio::test]

        $(#[$gate])?
        async fn history_pages_newest_first_with_filters() {
            let store = $make;
            let mut ids = Vec::new();
            for i in 0..5 {
                let mut job =
                    crate::store::tests::new_job(if i % 2 == 0 { "even" } else { "odd" }, None);
                if i == 4 {
                    job.owner = "bob".into();
                }
                store.insert(&job, &Admission::default()).await.unwrap();
                ids.push(job.id);
            }
            let mut query = ListQuery {
                owner: Some("alice".into()),
                limit: 2,
                ..ListQuery::default()
            };
            let page = store.list(&query).await.unwrap();
            assert_eq!(
                page.iter().map(|j| j.id).collect::<Vec<_>>(),
                vec![ids[3], ids[2]]
            );
            query.before = Some(ids[2]);
            let page = store.list(&query).await.unwrap();
            assert_eq!(
                page.iter().map(|j| j.id).collect::<Vec<_>>(),
                vec![ids[1], ids[0]]
            );
            let evens = ListQuery {
                owner: Some("alice".into()),
                tool: Some("even".into()),
                limit: 10,
                ..ListQuery::default()
            };
            assert_eq!(store.list(&evens).await.unwrap().len(), 2);
            let queued = ListQuery {
                owner: Some("alice".into()),
                state: Some(JobState::Running),
                limit: 10,
                ..ListQuery::default()
            };
            assert!(store.list(&queued).await.unwrap().is_empty());
            let first = store.get(ids[0]).await.unwrap().unwrap();
            assert_eq!(store.queued_ahead(&first).await.unwrap(), 0);
            let last = store.get(ids[4]).await.unwrap().unwrap();
            assert_eq!(store.queued_ahead(&last).await.unwrap(), 4);
            let everyone = ListQuery {
                owner: None,
                limit: 10,
                ..ListQuery::default()
            };
            assert_eq!(store.list(&everyone).await.unwrap().len(), 5);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn quotas_are_checked_with_the_insert() {
            let store = $make;
            let now = crate::jobs::now();
            let window = Admission {
                window: Some((2, now - chrono::Duration::minutes(5))),
                concurrent: None,
            };
            let first = crate::store::tests::new_job("t", None);
            let second = crate::store::tests::new_job("t", None);
            let third = crate::store::tests::new_job("t", None);
            assert!(matches!(
                store.insert(&first, &window).await.unwrap(),
                Inserted::Created
            ));
            assert!(matches!(
                store.insert(&second, &window).await.unwrap(),
                Inserted::Created
            ));
            match store.insert(&third, &window).await.unwrap() {
                Inserted::Refused(Refusal::JobsPerWindow { oldest }) => {
                    assert_eq!(oldest, first.created_at)
                }
                other => panic!("{other:?}"),
            }
            assert!(store.get(third.id).await.unwrap().is_none());
            // Another owner has its own window.
            let mut bobs = crate::store::tests::new_job("t", None);
            bobs.owner = "bob".into();
            assert!(matches!(
                store.insert(&bobs, &window).await.unwrap(),
                Inserted::Created
            ));

            let concurrent = Admission {
                window: None,
                concurrent: Some(2),
            };
            match store.insert(&third, &concurrent).await.unwrap() {
                Inserted::Refused(Refusal::Concurrent) => {}
                other => panic!("{other:?}"),
            }
            store.request_cancel(first.id, now).await.unwrap();
            assert!(matches!(
                store.insert(&third, &concurrent).await.unwrap(),
                Inserted::Created
            ));
            let standing = store
                .standing("alice", now - chrono::Duration::minutes(5))
                .await
                .unwrap();
            assert_eq!((standing.jobs_since, standing.active), (3, 2));
            assert_eq!(store.queued_count(100).await.unwrap(), 3);
            assert_eq!(store.queued_count(2).await.unwrap(), 2);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn higher_priority_is_claimed_first() {
            let store = $make;
            let low = crate::store::tests::new_job("t", None);
            let mut high = crate::store::tests::new_job("t", None);
            high.priority = 10;
            store.insert(&low, &Admission::default()).await.unwrap();
            store.insert(&high, &Admission::default()).await.unwrap();
            let stored_low = store.get(low.id).await.unwrap().unwrap();
            assert_eq!(stored_low, low);
            assert_eq!(store.queued_ahead(&stored_low).await.unwrap(), 1);
            let now = Utc::now();
            let lease = now + chrono::Duration::seconds(30);
            let claimed = store.claim(now, lease, &[]).await.unwrap().unwrap();
            assert_eq!(claimed.id, high.id);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn keys_are_found_listed_and_revoked() {
            let store = $make;
            assert!(!store.has_keys().await.unwrap());
            let key = crate::auth::keys::generate("ci", "free", false, crate::jobs::now());
            store.create_key(&key.record).await.unwrap();
            assert!(store.has_keys().await.unwrap());
            assert_eq!(
                store.find_key(&key.record.id).await.unwrap(),
                Some(key.record.clone())
            );
            assert_eq!(store.list_keys().await.unwrap(), vec![key.record.clone()]);
            assert!(store
                .revoke_key(&key.record.id, crate::jobs::now())
                .await
                .unwrap());
            assert!(!store
                .revoke_key(&key.record.id, crate::jobs::now())
                .await
                .unwrap());
            assert!(store
                .find_key(&key.record.id)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some());
            assert!(store.has_keys().await.unwrap());
            assert_eq!(store.find_key("000000000000").await.unwrap(), None);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn request_counters_count_per_window_and_are_pruned() {
            let store = $make;
            let window = crate::jobs::now();
            let next = window + chrono::Duration::minutes(1);
            assert_eq!(store.count_request("a", window).await.unwrap(), 1);
            assert_eq!(store.count_request("a", window).await.unwrap(), 2);
            assert_eq!(store.count_request("b", window).await.unwrap(), 1);
            assert_eq!(store.count_request("a", next).await.unwrap(), 1);
            store.prune_request_counts(next).await.unwrap();
            assert_eq!(store.count_request("a", window).await.unwrap(), 1);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn signing_secrets_rotate() {
            let store = $make;
            assert!(store.signing_secrets(2).await.unwrap().is_empty());
            let first = store
                .add_signing_secret("aa", crate::jobs::now())
                .await
                .unwrap();
            let second = store
                .add_signing_secret("bb", crate::jobs::now())
                .await
                .unwrap();
            let third = store
                .add_signing_secret("cc", crate::jobs::now())
                .await
                .unwrap();
            assert!(first < second && second < third);
            assert_eq!(
                store.signing_secrets(2).await.unwrap(),
                vec![(third, "cc".to_owned()), (second, "bb".to_owned())]
            );
        }

        #[tokio::test]

        $(#[$gate])?
        async fn attempts_are_summed_per_owner() {
            let store = $make;
            let job = crate::store::tests::new_job("t", None);
            store.insert(&job, &Admission::default()).await.unwrap();
            let now = crate::jobs::now();
            let usage = |attempt: u32, owner: &str| AttemptUsage {
                job_id: job.id,
                attempt,
                owner: owner.into(),
                tier: "free".into(),
                tool: "t".into(),
                tool_version: 1,
                started_at: now,
                finished_at: now,
                outcome: "retry".into(),
                wall_ms: 100,
                cpu_ms: Some(40),
                max_rss_bytes: Some(1000 * attempt as u64),
                bytes_in: 10,
                bytes_out: 20,
            };
            store.record_attempt(&usage(1, "alice")).await.unwrap();
            store.record_attempt(&usage(2, "alice")).await.unwrap();
            let since = now - chrono::Duration::hours(1);
            let totals = store.usage(Some("alice"), since).await.unwrap();
            assert_eq!(
                totals,
                UsageTotals {
                    jobs: 1,
                    attempts: 2,
                    wall_ms: 200,
                    cpu_ms: 80,
                    max_rss_bytes: 2000,
                    bytes_in: 20,
                    bytes_out: 40
                }
            );
            assert_eq!(
                store.usage(Some("bob"), since).await.unwrap(),
                UsageTotals::default()
            );
            assert_eq!(store.usage(None, since).await.unwrap().attempts, 2);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn cleanup_finds_expired_and_half_purged_jobs_only() {
            let store = $make;
            let mut ids = Vec::new();
            for _ in 0..3 {
                let job = crate::store::tests::new_job("t", None);
                store.insert(&job, &Admission::default()).await.unwrap();
                ids.push(job.id);
            }
            let now = crate::jobs::now();
            let lease = now + chrono::Duration::seconds(30);
            // Two finished, one expired already and one not yet; the third stays queued.
            for expires in [
                now - chrono::Duration::seconds(1),
                now + chrono::Duration::hours(1),
            ] {
                let claimed = store.claim(now, lease, &[]).await.unwrap().unwrap();
                let mut done = crate::store::tests::completion(JobState::Succeeded);
                done.expires_at = Some(expires);
                assert!(store
                    .complete(claimed.id, claimed.attempt, &done)
                    .await
                    .unwrap());
            }
            assert_eq!(store.due_for_cleanup(now, 10).await.unwrap(), vec![ids[0]]);
            // Purged but its blobs not yet deleted: still due, until cleaned.
            assert!(store.mark_purged(ids[0], now).await.unwrap());
            assert_eq!(store.due_for_cleanup(now, 10).await.unwrap(), vec![ids[0]]);
            store.mark_cleaned(ids[0], now).await.unwrap();
            assert!(store.due_for_cleanup(now, 10).await.unwrap().is_empty());
            // Far in the future, every finished job is due, never the queued one.
            let later = now + chrono::Duration::days(1);
            assert_eq!(
                store.due_for_cleanup(later, 10).await.unwrap(),
                vec![ids[1]]
            );
            assert!(!store.mark_purged(ids[2], now).await.unwrap());
        }
    };
    ($make:expr) => {
        conformance!(@gated [] $make);
    };
}

/// Behaviour across several store instances sharing one database (replicas and workers
/// in other processes). `$pair` makes two instances on one fresh database.
macro_rules! shared_database {
    (#[$gate:meta] ; $pair:expr) => {
        shared_database!(@gated [$gate] $pair);
    };
    (@gated [$($gate:meta)?] $pair:expr) => {
        #[tokio::test]
        $(#[$gate])?
        async fn concurrent_claims_from_two_instances_never_take_the_same_job() {
            let (a, b) = $pair;
            let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
            let mut ids = std::collections::BTreeSet::new();
            for _ in 0..120 {
                let job = crate::store::tests::new_job("t", None);
                ids.insert(job.id);
                a.insert(&job, &Admission::default()).await.unwrap();
            }
            let mut claimers = Vec::new();
            for index in 0..8 {
                let a = a.clone();
                let b = b.clone();
                claimers.push(tokio::spawn(async move {
                    let mut claimed = Vec::new();
                    loop {
                        let now = chrono::Utc::now();
                        let lease = now + chrono::Duration::seconds(60);
                        let job = if index % 2 == 0 {
                            a.claim(now, lease, &[]).await.unwrap()
                        } else {
                            b.claim(now, lease, &[]).await.unwrap()
                        };
                        match job {
                            Some(job) => claimed.push(job.id),
                            None => break claimed,
                        }
                    }
                }));
            }
            let mut claimed = Vec::new();
            for claimer in claimers {
                claimed.extend(claimer.await.unwrap());
            }
            let unique: std::collections::BTreeSet<_> = claimed.iter().copied().collect();
            assert_eq!(unique.len(), claimed.len(), "a job was claimed twice");
            assert_eq!(unique, ids, "every job was claimed");
        }

        #[tokio::test]

        $(#[$gate])?
        async fn quotas_hold_across_instances() {
            let (a, b) = $pair;
            let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
            let admission = Admission {
                window: Some((7, crate::jobs::now() - chrono::Duration::minutes(5))),
                concurrent: Some(5),
            };
            let mut inserts = Vec::new();
            for index in 0..24 {
                let a = a.clone();
                let b = b.clone();
                let admission = admission.clone();
                inserts.push(tokio::spawn(async move {
                    let job = crate::store::tests::new_job("t", None);
                    let store: &dyn JobStore = if index % 2 == 0 { &*a } else { &*b };
                    matches!(
                        store.insert(&job, &admission).await.unwrap(),
                        Inserted::Created
                    )
                }));
            }
            let mut created = 0;
            for insert in inserts {
                created += usize::from(insert.await.unwrap());
            }
            assert_eq!(created, 5, "the concurrent-jobs quota admitted {created}");
            // The same idempotency key through both instances: one job.
            let first = crate::store::tests::new_job("u", Some("same"));
            let mut second = crate::store::tests::new_job("u", Some("same"));
            second.owner = first.owner.clone();
            let none = Admission::default();
            let (one, two) = tokio::join!(a.insert(&first, &none), b.insert(&second, &none));
            let created = [one.unwrap(), two.unwrap()]
                .iter()
                .filter(|inserted| matches!(inserted, Inserted::Created))
                .count();
            assert_eq!(created, 1);
            // Request counters are shared.
            let window = crate::jobs::now();
            assert_eq!(a.count_request("k", window).await.unwrap(), 1);
            assert_eq!(b.count_request("k", window).await.unwrap(), 2);
        }
    };
    ($pair:expr) => {
        shared_database!(@gated [] $pair);
    };
}

mod sqlite {
    use super::super::sqlite::SqliteJobStore;
    use super::super::*;

    async fn fresh() -> (SqliteJobStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteJobStore::open(&dir.path().join("jobs.db"))
            .await
            .unwrap();
        (store, dir)
    }

    conformance!({
        let (store, dir) = fresh().await;
        // Keep the directory alive for the test's duration.
        Box::leak(Box::new(dir));
        store
    });

    shared_database!({
        let (store, dir) = fresh().await;
        let other = SqliteJobStore::open(&dir.path().join("jobs.db"))
            .await
            .unwrap();
        Box::leak(Box::new(dir));
        (store, other)
    });
}

/// The same suite against PostgreSQL, each test in a schema of its own. Runs when
/// `BATCHGATE_TEST_PG_URL` names a server (CI sets it), and skips visibly otherwise.
mod postgres {
    use std::str::FromStr;

    use super::super::postgres::PgJobStore;
    use super::super::*;

    async fn fresh() -> Option<PgJobStore> {
        Some(PgJobStore::connect(fresh_schema().await?).await.unwrap())
    }

    /// Connection options for a new, empty schema.
    async fn fresh_schema() -> Option<sqlx::postgres::PgConnectOptions> {
        let url = match std::env::var("BATCHGATE_TEST_PG_URL") {
            Ok(url) => url,
            Err(_) => {
                if std::env::var_os("BATCHGATE_TEST_STRICT").is_some() {
                    panic!("required for CI but missing: BATCHGATE_TEST_PG_URL");
                }
                eprintln!("SKIPPED: set BATCHGATE_TEST_PG_URL to run the PostgreSQL store tests");
                return None;
            }
        };
        let schema = format!("test_{}", uuid::Uuid::now_v7().simple());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Some(
            sqlx::postgres::PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]),
        )
    }

    conformance!(
        #[cfg_attr(
            not(gate_pg),
            ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
        )];
        match fresh().await {
            Some(store) => store,
            None => return,
        }
    );

    shared_database!(
        #[cfg_attr(
            not(gate_pg),
            ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
        )];
        {
            let Some(options) = fresh_schema().await else {
                return;
            };
            // Both migrate at once: the advisory lock lets one do it.
            let (a, b) = tokio::join!(
                PgJobStore::connect(options.clone()),
                PgJobStore::connect(options)
            );
            (a.unwrap(), b.unwrap())
        }
    );

    /// A change committed through one instance wakes the other's waiters and idle
    /// workers (LISTEN/NOTIFY), as it would in another process.
    #[tokio::test]
    #[cfg_attr(
        not(gate_pg),
        ignore = "needs PostgreSQL: set BATCHGATE_TEST_PG_URL=postgres://…"
    )]
    async fn changes_made_elsewhere_wake_this_instance() {
        let Some(options) = fresh_schema().await else {
            return;
        };
        let a = PgJobStore::connect(options.clone()).await.unwrap();
        let b = PgJobStore::connect(options).await.unwrap();
        let job = crate::store::tests::new_job("t", None);
        let mut woken = b.changes().subscribe(job.id);
        let idle_worker = b.changes().queued();
        a.insert(&job, &Admission::default()).await.unwrap();
        let wait = std::time::Duration::from_secs(2);
        tokio::time::timeout(wait, idle_worker)
            .await
            .expect("a job queued through one instance wakes the other's workers");
        tokio::time::timeout(wait, woken.changed())
            .await
            .expect("the insert wakes the job's subscribers elsewhere");
        let now = chrono::Utc::now();
        a.claim(now, now + chrono::Duration::seconds(60), &[])
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(wait, woken.changed())
            .await
            .expect("the claim wakes the job's subscribers elsewhere");
        // A finished job cached by one instance is forgotten when another purges it.
        a.complete(
            job.id,
            1,
            &crate::store::tests::completion(JobState::Succeeded),
        )
        .await
        .unwrap();
        tokio::time::timeout(wait, woken.changed()).await.unwrap();
        assert_eq!(
            b.get(job.id).await.unwrap().unwrap().state,
            JobState::Succeeded
        );
        assert!(a.mark_purged(job.id, now).await.unwrap());
        tokio::time::timeout(wait, woken.changed()).await.unwrap();
        assert!(b.get(job.id).await.unwrap().unwrap().purged_at.is_some());
    }
}
