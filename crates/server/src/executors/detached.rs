//! What the executors whose programs outlive the worker (Slurm, containers, Kubernetes)
//! share: the reference recorded with an attempt, the names of attempts' work
//! directories, and the sweep's question "does any job still want this program?".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobLookup, RunControl};
pub use crate::workdirs::{attempt_label, parse_label};

/// A job's `executor_ref`: which executor started the program, its id there (a Slurm
/// job id, a container's or a Kubernetes Job's name), and its work directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub executor: String,
    pub id: String,
    pub workdir: PathBuf,
}

impl Reference {
    /// A reference `executor` wrote, whose work directory is an attempt's directly under
    /// `work_root` (it is removed after the attempt: never anything else) and whose id
    /// passes `valid`.
    pub fn parse(
        text: &str,
        executor: &str,
        work_root: &Path,
        valid: impl Fn(&str) -> bool,
    ) -> Option<Reference> {
        let reference: Reference = serde_json::from_str(text).ok()?;
        let ours = reference.executor == executor
            && reference.workdir.parent() == Some(work_root)
            && parse_label(&attempt_label(&reference.workdir)).is_some()
            && valid(&reference.id);
        ours.then_some(reference)
    }

    /// Records where `executor` started the attempt's program (`id`, in `workdir`) with
    /// the attempt, before the executor follows it.
    pub async fn record(control: &RunControl, executor: &str, id: &str, workdir: &Path) {
        let reference = Reference {
            executor: executor.to_owned(),
            id: id.to_owned(),
            workdir: workdir.to_owned(),
        };
        let text = serde_json::to_string(&reference).expect("a reference serializes");
        if let Err(error) = control.references.record(&text).await {
            tracing::warn!(executor, id, %error, "cannot record where the program runs; a restarted worker will not follow it");
        }
    }
}

/// Whether a program found in the engine, started for `attempt` of job `job_id` (its id
/// there: `id`), is still wanted: its job has not ended and it is the attempt running
/// now or the program that attempt follows. A store that does not answer keeps it.
pub async fn still_wanted(
    jobs: &dyn JobLookup,
    job_id: Uuid,
    attempt: u32,
    executor: &str,
    id: &str,
) -> bool {
    match jobs.standing(job_id).await {
        Ok(Some(job)) => {
            let followed = job
                .executor_ref
                .as_deref()
                .and_then(|text| serde_json::from_str::<Reference>(text).ok())
                .is_some_and(|r| r.executor == executor && r.id == id);
            !job.ended && (followed || job.attempt == attempt)
        }
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Whether job `job_id` has ended (or is unknown): its work directories may go.
pub async fn job_ended(jobs: &dyn JobLookup, job_id: Uuid) -> bool {
    match jobs.standing(job_id).await {
        Ok(Some(job)) => job.ended,
        Ok(None) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_back_only_by_their_executor_under_its_root() {
        let id = Uuid::now_v7();
        let root = Path::new("/shared/work");
        let reference = Reference {
            executor: "slurm".into(),
            id: "42".into(),
            workdir: root.join(format!("{id}-2")),
        };
        let text = serde_json::to_string(&reference).unwrap();
        let digits = |id: &str| id.bytes().all(|b| b.is_ascii_digit());
        assert_eq!(
            Reference::parse(&text, "slurm", root, digits),
            Some(reference.clone())
        );
        assert_eq!(Reference::parse(&text, "container", root, digits), None);
        assert_eq!(
            Reference::parse(&text, "slurm", Path::new("/elsewhere"), digits),
            None
        );
        assert_eq!(Reference::parse(&text, "slurm", root, |_| false), None);
        let outside = Reference {
            workdir: PathBuf::from("/etc"),
            ..reference
        };
        let text = serde_json::to_string(&outside).unwrap();
        assert_eq!(
            Reference::parse(&text, "slurm", Path::new("/"), digits),
            None
        );
    }

    #[test]
    fn labels_name_a_job_and_attempt() {
        let id = Uuid::now_v7();
        assert_eq!(parse_label(&format!("{id}-3")), Some((id, 3)));
        assert_eq!(parse_label("lost+found"), None);
        assert_eq!(parse_label(&format!("{id}-x")), None);
        assert_eq!(
            attempt_label(Path::new(&format!("/w/{id}-3"))),
            format!("{id}-3")
        );
    }
}
