//! One attempt's pipeline: stage → spec → run → publish.

use super::*;

/// Stages, runs and collects (ARCHITECTURE's pipeline: stage → spec → run → publish).
/// `Err` is an infrastructure failure (retried); a program's failure is an `Ok` outcome.
pub(super) async fn execute(
    runtime: &WorkerState,
    attempt: Attempt<'_>,
    control: RunControl,
    measured: &mut Measured,
) -> Result<(AttemptOutcome, Vec<StoredOutput>), String> {
    measured.started = Some(crate::jobs::now());
    let files = stage(runtime, &attempt, measured).await?;
    let spec = run_spec(runtime, &attempt, &files)?;
    if let Some(uid) = spec.run_as {
        hand_over(attempt.workdir, uid)
            .await
            .map_err(|error| format!("give the work directory to the program's user: {error}"))?;
    }
    let logs = [spec.stdout_path.clone(), spec.stderr_path.clone()];
    let live = LiveLogs::start(runtime, attempt.job, logs.clone());
    let run = attempt.executor.run(spec, control).await;
    // The final logs below replace the live copies; none may land after them.
    live.stop().await;
    let run = run.map_err(|error| error.to_string())?;
    if run.termination == Termination::Detached {
        measured.detached = true;
        return Ok((AttemptOutcome::Canceled, Vec::new()));
    }
    // The program has ended: a worker taking the job over must not follow it again.
    if attempt.attach.is_some() || attempt.references.recorded() {
        runtime
            .store
            .set_executor_ref(attempt.job.id, attempt.job.attempt, None)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "cannot clear the executor reference");
                format!("clear the executor reference: {}", error.summary())
            })?;
    }
    measured.wall = run.wall_time;
    measured.cpu = run.cpu_time;
    measured.peak_memory = run.peak_memory_bytes;
    publish(runtime, &attempt, &run, &files.outputs, logs, measured).await
}

/// Where an attempt's files are in its work directory (as the worker sees it).
pub(super) struct AttemptFiles {
    inputs: BTreeMap<String, PathBuf>,
    outputs: BTreeMap<String, PathBuf>,
    control: Option<PathBuf>,
}

/// Makes the work directory and copies the inputs and the control file into it (unless
/// the attempt follows a program an earlier one started, whose directory has them).
pub(super) async fn stage(
    runtime: &WorkerState,
    attempt: &Attempt<'_>,
    measured: &mut Measured,
) -> Result<AttemptFiles, String> {
    let Attempt {
        job, tool, workdir, ..
    } = *attempt;
    let staging = attempt.attach.is_none();
    let mut outputs = BTreeMap::new();
    for output in &tool.outputs {
        if let Some(relative) = &output.path {
            outputs.insert(output.name.clone(), workdir.join(relative));
        }
    }
    if staging {
        let directories = outputs
            .values()
            .filter_map(|path| path.parent())
            .filter(|parent| *parent != workdir)
            .map(Path::to_owned)
            .collect();
        runtime
            .work_dirs
            .create(workdir, directories, attempt.executor.on_this_host())
            .await
            .map_err(|error| format!("create the work directory: {error}"))?;
    }
    let mut inputs = BTreeMap::new();
    for stored in &job.inputs {
        let spec = tool
            .input(&stored.name)
            .ok_or_else(|| format!("the tool has no input `{}` any more", stored.name))?;
        let path = workdir.join(&spec.file_name);
        if staging {
            let key = JobKeys::input(job.id, &stored.name);
            measured.bytes_in += patiently(runtime, || runtime.blobs.copy_to_file(&key, &path))
                .await
                .map_err(|error| blob_failure(&format!("stage input `{}`", stored.name), &error))?;
        }
        inputs.insert(stored.name.clone(), path);
    }
    let control = match &tool.control {
        Some(control) => {
            let path = workdir.join(&control.file);
            if staging {
                let key = JobKeys::control(job.id);
                measured.bytes_in += patiently(runtime, || runtime.blobs.copy_to_file(&key, &path))
                    .await
                    .map_err(|error| blob_failure("stage the control file", &error))?;
            }
            Some(path)
        }
        None => None,
    };
    Ok(AttemptFiles {
        inputs,
        outputs,
        control,
    })
}

/// What the executor runs: the rendered argv (wrapped in the sandbox on this host), the
/// environment, the limits and where the streams go.
pub(super) fn run_spec(
    runtime: &WorkerState,
    attempt: &Attempt<'_>,
    files: &AttemptFiles,
) -> Result<RunSpec, String> {
    let Attempt {
        job,
        tool,
        executor,
        workdir,
        ..
    } = *attempt;
    // The argv names the files as the program sees them (a container mounts the work
    // directory elsewhere).
    let view = executor.program_workdir(workdir);
    let seen = |path: &PathBuf| view.join(path.strip_prefix(workdir).unwrap_or(path));
    let seen_all = |paths: &BTreeMap<String, PathBuf>| {
        paths
            .iter()
            .map(|(name, path)| (name.clone(), seen(path)))
            .collect::<BTreeMap<_, _>>()
    };
    let (seen_inputs, seen_outputs) = (seen_all(&files.inputs), seen_all(&files.outputs));
    let seen_control = files.control.as_ref().map(seen);
    let values = ArgValues {
        workdir: &view,
        inputs: &seen_inputs,
        outputs: &seen_outputs,
        control: seen_control.as_deref(),
        params: &job.params,
    };
    let mut argv = tool
        .command
        .iter()
        .map(|argument| argument.render(&values))
        .collect::<Result<Vec<_>, _>>()?;
    // The sandbox and per-job users belong to this host; a container or a cluster job
    // gets the engine's isolation.
    let local = executor.on_this_host();
    if let Some(bwrap) = runtime.sandbox.as_ref().filter(|_| local) {
        argv = crate::executors::sandbox::wrap(bwrap, argv, workdir, &runtime.data_dir);
    }
    let stdout_is_output = tool
        .outputs
        .iter()
        .any(|o| o.source == OutputSource::Stdout);
    Ok(RunSpec {
        argv,
        workdir: workdir.to_owned(),
        env: environment(tool, &view),
        timeout: tool.limits.timeout,
        kill_grace: tool.limits.kill_grace,
        rlimits: ResourceLimits {
            cpu_seconds: tool.limits.cpu_seconds,
            memory_bytes: tool.limits.memory_bytes,
            file_size_bytes: tool.limits.file_size_bytes,
            open_files: Some(tool.limits.open_files),
            processes: Some(tool.limits.processes),
        },
        progress: tool.progress.clone(),
        stdout_path: live_log(workdir, "stdout"),
        stdout_cap: if stdout_is_output {
            tool.limits.max_output_bytes
        } else {
            tool.limits.max_log_bytes
        },
        stderr_path: live_log(workdir, "stderr"),
        stderr_cap: tool.limits.max_log_bytes,
        run_as: attempt.run_as.filter(|_| local),
        attach: attempt.attach.clone(),
        slurm: tool.slurm.clone(),
        container: tool.container.clone(),
        kubernetes: tool.kubernetes.clone(),
    })
}

/// Stores the logs (whatever happened: they are how a user understands a failure) and,
/// when the program succeeded, its file outputs, in one call; then converts the outputs.
pub(super) async fn publish(
    runtime: &WorkerState,
    attempt: &Attempt<'_>,
    run: &RunOutcome,
    output_paths: &BTreeMap<String, PathBuf>,
    [stdout_path, stderr_path]: [PathBuf; 2],
    measured: &mut Measured,
) -> Result<(AttemptOutcome, Vec<StoredOutput>), String> {
    let Attempt {
        job, tool, workdir, ..
    } = *attempt;
    let (id, number) = (job.id, job.attempt);
    let failure = classify(tool, run);
    let logs = [("stdout", stdout_path), ("stderr", stderr_path)];
    let file_outputs: Vec<(&OutputSpec, &PathBuf)> = match failure {
        Some(_) => Vec::new(),
        None => tool
            .outputs
            .iter()
            .filter_map(|output| Some((output, output_paths.get(&output.name)?)))
            .collect(),
    };
    let mut probed: Vec<PathBuf> = logs.iter().map(|(_, path)| path.clone()).collect();
    probed.extend(file_outputs.iter().map(|(_, path)| (*path).clone()));
    let sizes = file_sizes(workdir, probed).await;
    let (log_sizes, output_sizes) = sizes.split_at(logs.len());
    let mut files: Vec<(String, PathBuf)> = logs
        .iter()
        .zip(log_sizes)
        .filter(|(_, size)| size.is_some())
        .map(|((stream, path), _)| (JobKeys::log(id, number, stream), path.clone()))
        .collect();
    let stored_logs = files.len();
    let failure = failure.or_else(|| check_outputs(tool, run, &file_outputs, output_sizes));
    if failure.is_none() {
        files.extend(
            file_outputs
                .iter()
                .zip(output_sizes)
                .filter(|(_, size)| size.is_some())
                .map(|((output, path), _)| {
                    (JobKeys::output(id, number, &output.name), (*path).clone())
                }),
        );
    }
    let stored = patiently(runtime, || runtime.blobs.put_files(&files))
        .await
        .map_err(|error| blob_failure("store the logs and outputs", &error))?;
    measured.bytes_out += stored[..stored_logs].iter().sum::<u64>();
    match failure {
        Some(failure) => Ok((failure, Vec::new())),
        None => {
            let sizes = files[stored_logs..]
                .iter()
                .zip(&stored[stored_logs..])
                .map(|((key, _), size)| (key.clone(), *size))
                .collect();
            collect_outputs(runtime, job, tool, run, sizes).await
        }
    }
}

/// The size of each path that is a regular file reached from `workdir` without a link,
/// in one blocking call. The program may have replaced an output, or the directory of
/// its logs, with a link to a file only the server may read; its processes are all gone
/// by now, so what is checked here is what is read.
pub(super) async fn file_sizes(workdir: &Path, paths: Vec<PathBuf>) -> Vec<Option<u64>> {
    let count = paths.len();
    let workdir = workdir.to_owned();
    tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|path| {
                let linked = path
                    .ancestors()
                    .take_while(|ancestor| *ancestor != workdir)
                    .any(|ancestor| {
                        std::fs::symlink_metadata(ancestor)
                            .is_ok_and(|m| m.file_type().is_symlink())
                    });
                std::fs::symlink_metadata(path)
                    .ok()
                    .filter(|metadata| !linked && metadata.is_file())
                    .map(|metadata| metadata.len())
            })
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![None; count])
}

/// Gives the work directory (except the server's own `.batchgate`) to the program's
/// user, so that a program running as that user can read its inputs and write outputs,
/// and no other job's user can enter it (0700).
pub(super) async fn hand_over(workdir: &Path, uid: u32) -> std::io::Result<()> {
    let workdir = workdir.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::datadir::set_mode(&workdir, 0o700)?;
        let mut pending = vec![workdir.clone()];
        while let Some(path) = pending.pop() {
            // Nothing here is the program's yet, but links are never followed.
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
            if std::fs::symlink_metadata(&path)?.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    let entry = entry?;
                    if entry.file_name() != crate::workdirs::META || path != workdir {
                        pending.push(entry.path());
                    }
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The program's environment: a fixed base, the tool's allowlist from the server's own
/// environment, then the tool's fixed values. Nothing else.
pub(super) fn environment(tool: &Tool, workdir: &Path) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), crate::tools::PROGRAM_PATH.into());
    env.insert("HOME".into(), workdir.to_string_lossy().into_owned());
    env.insert(
        "TMPDIR".into(),
        workdir
            .join(crate::workdirs::TMP)
            .to_string_lossy()
            .into_owned(),
    );
    env.insert("LANG".into(), "C.UTF-8".into());
    for name in &tool.env_allow {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), value);
        }
    }
    for (name, value) in &tool.env_vars {
        env.insert(name.clone(), value.clone());
    }
    env.into_iter().collect()
}
