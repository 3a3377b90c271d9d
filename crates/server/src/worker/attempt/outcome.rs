//! What an ended program's run means: its outcome (`classify`), its outputs checked and
//! converted, and the host's paths removed from what the client is told.

use super::*;

/// Paths of this machine that a failed attempt's message or stderr may hold (a program
/// names its input file, a sandbox the program it could not find): the client is told
/// what went wrong, never where the server keeps things.
pub(super) struct HostPaths {
    /// (path, what the client sees instead), longest first.
    replacements: Vec<(String, String)>,
}

impl HostPaths {
    pub(super) fn of(runtime: &WorkerState, tool: &Tool, workdir: &Path) -> HostPaths {
        let text = |path: &Path| path.to_string_lossy().into_owned();
        let mut replacements = vec![
            (format!("{}/", text(workdir)), String::new()),
            (text(workdir), ".".to_owned()),
            (text(&runtime.data_dir), "<data_dir>".to_owned()),
        ];
        let program = tool.command.first().and_then(|argument| {
            let values = ArgValues {
                workdir,
                inputs: &BTreeMap::new(),
                outputs: &BTreeMap::new(),
                control: None,
                params: &Map::new(),
            };
            argument.render(&values).ok()
        });
        if let Some(program) = program.filter(|program| program.contains('/')) {
            let name = Path::new(&program)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            replacements.push((program, name));
        }
        replacements.retain(|(path, _)| path.len() > 1);
        replacements.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        HostPaths { replacements }
    }

    pub(super) fn clean(&self, text: &str) -> String {
        self.replacements
            .iter()
            .fold(text.to_owned(), |text, (path, shown)| {
                text.replace(path, shown)
            })
    }

    pub(super) fn remove_from(&self, outcome: AttemptOutcome) -> AttemptOutcome {
        let clean_error = |mut error: JobError| {
            error.message = self.clean(&error.message);
            error.stderr_tail = error.stderr_tail.map(|tail| self.clean(&tail));
            error
        };
        match outcome {
            AttemptOutcome::ProgramFailed(error) => {
                AttemptOutcome::ProgramFailed(clean_error(error))
            }
            AttemptOutcome::TimedOut(error) => AttemptOutcome::TimedOut(clean_error(error)),
            AttemptOutcome::Infrastructure(message) => {
                AttemptOutcome::Infrastructure(self.clean(&message))
            }
            other => other,
        }
    }
}

/// The outcome of a run that did not succeed, or `None` when outputs should be collected.
pub(super) fn classify(tool: &Tool, run: &RunOutcome) -> Option<AttemptOutcome> {
    let tail = (!run.stderr_tail.is_empty()).then(|| run.stderr_tail.clone());
    let last_line = run
        .stderr_tail
        .lines()
        .last()
        .map(|line| format!(": {line}"))
        .unwrap_or_default();
    let error =
        |code: &str, message: String, exit_code: Option<i32>, signal: Option<i32>| JobError {
            code: code.into(),
            message,
            exit_code,
            signal,
            stderr_tail: tail.clone(),
        };
    match &run.termination {
        Termination::Exited(code) if tool.success_exit_codes.contains(code) => None,
        Termination::Exited(code) => Some(AttemptOutcome::ProgramFailed(error(
            "program-exit-status",
            format!("the program exited with status {code}{last_line}"),
            Some(*code),
            None,
        ))),
        Termination::Signaled(signal) if cpu_limit_reached(tool, run, *signal) => {
            Some(AttemptOutcome::ProgramFailed(error(
                "cpu-time-limit",
                format!(
                    "the program used more CPU time than the tool's limit of {} s (limits.cpu_seconds) and was stopped",
                    tool.limits.cpu_seconds.unwrap_or_default()
                ),
                None,
                Some(*signal),
            )))
        }
        Termination::Signaled(signal) => Some(AttemptOutcome::ProgramFailed(error(
            "program-killed",
            format!(
                "the program was killed by signal {signal}{}",
                signal_reason(tool, *signal)
            ),
            None,
            Some(*signal),
        ))),
        Termination::TimedOut => Some(AttemptOutcome::TimedOut(error(
            "timeout",
            format!(
                "the program ran longer than the tool's limit of {} s and was stopped",
                tool.limits.timeout.as_secs()
            ),
            None,
            None,
        ))),
        Termination::Canceled | Termination::Detached => Some(AttemptOutcome::Canceled),
        Termination::OutOfMemory => Some(AttemptOutcome::ProgramFailed(error(
            "out-of-memory",
            format!(
                "the program used more memory than the tool's limit{} and was killed",
                tool.limits
                    .memory_bytes
                    .map(|bytes| format!(" of {} MB", bytes / (1024 * 1024)))
                    .unwrap_or_default()
            ),
            None,
            None,
        ))),
        Termination::Engine {
            message,
            retry: true,
            ..
        } => Some(AttemptOutcome::Infrastructure(message.clone())),
        Termination::Engine { code, message, .. } => Some(AttemptOutcome::ProgramFailed(
            error(code, message.clone(), None, None),
        )),
        Termination::OutputTooLarge { stream } => {
            let (code, message) = stream_too_large(tool, stream);
            Some(AttemptOutcome::ProgramFailed(error(code, message, None, None)))
        }
        Termination::SpawnFailed { not_found, message } => {
            Some(AttemptOutcome::ProgramFailed(error(
                if *not_found {
                    "program-not-found"
                } else {
                    "program-not-started"
                },
                if *not_found {
                    format!("{message}; the program is not installed on this server (an operator must fix the tool)")
                } else {
                    message.clone()
                },
                None,
                None,
            )))
        }
    }
}

/// What a signal usually means, for the failure message.
pub(super) fn signal_reason(tool: &Tool, signal: i32) -> &'static str {
    match signal {
        25 => " (file size limit reached)",
        9 if tool.limits.memory_bytes.is_some() => " (killed; it may have run out of memory)",
        9 => " (killed)",
        11 => " (segmentation fault)",
        6 => " (aborted)",
        _ => "",
    }
}

/// The code and message of a stream that outgrew its cap: the output (a stdout output)
/// or a log.
pub(super) fn stream_too_large(tool: &Tool, stream: &str) -> (&'static str, String) {
    let is_output = stream == "stdout"
        && tool
            .outputs
            .iter()
            .any(|o| o.source == OutputSource::Stdout);
    if is_output {
        (
            "output-too-large",
            format!(
                "the program's output (stdout) is larger than the tool's limit of {} bytes \
                 (limits.max_output_bytes); the program was stopped",
                tool.limits.max_output_bytes
            ),
        )
    } else {
        (
            "log-too-large",
            format!(
                "the program wrote more than the tool's limit of {} bytes to {stream} \
                 (limits.max_log_bytes); the program was stopped",
                tool.limits.max_log_bytes
            ),
        )
    }
}

/// Did the kernel end the program for its CPU time? SIGXCPU at the tool's limit, or the
/// SIGKILL at the hard limit a second later for a program that ignores SIGXCPU.
pub(super) fn cpu_limit_reached(tool: &Tool, run: &RunOutcome, signal: i32) -> bool {
    let Some(limit) = tool.limits.cpu_seconds else {
        return false;
    };
    match signal {
        24 => true,
        9 => run
            .cpu_time
            .is_some_and(|used| used >= Duration::from_secs(limit)),
        _ => false,
    }
}

/// A run that ended well whose outputs cannot be taken: the program's failure, with the
/// end of its stderr.
pub(super) fn output_failure(run: &RunOutcome, code: &str, message: String) -> AttemptOutcome {
    AttemptOutcome::ProgramFailed(JobError {
        code: code.into(),
        message,
        exit_code: None,
        signal: None,
        stderr_tail: (!run.stderr_tail.is_empty()).then(|| run.stderr_tail.clone()),
    })
}

/// Why a successful run's outputs cannot be taken (missing, too large), if they cannot.
/// `sizes` holds the size of each file output's path (`None`: not a file).
pub(super) fn check_outputs(
    tool: &Tool,
    run: &RunOutcome,
    file_outputs: &[(&OutputSpec, &PathBuf)],
    sizes: &[Option<u64>],
) -> Option<AttemptOutcome> {
    let program_failed = |code: &str, message: String| Some(output_failure(run, code, message));
    let limit = tool.limits.max_output_bytes;
    if run.stdout_truncated {
        if let Some(output) = tool
            .outputs
            .iter()
            .find(|o| o.source == OutputSource::Stdout)
        {
            return program_failed(
                "output-too-large",
                format!(
                    "output `{}` (stdout) is larger than the tool's limit of {limit} bytes",
                    output.name
                ),
            );
        }
    }
    for ((output, _), size) in file_outputs.iter().zip(sizes) {
        match size {
            None if !output.required => {}
            None => {
                return program_failed(
                    "missing-output",
                    format!(
                        "the program ended successfully but did not write its output `{}` ({})",
                        output.name,
                        output.path.as_deref().unwrap_or_default()
                    ),
                )
            }
            Some(size) if *size > limit => {
                return program_failed(
                    "output-too-large",
                    format!(
                        "output `{}` is {size} bytes, over the tool's limit of {limit}",
                        output.name
                    ),
                )
            }
            Some(_) => {}
        }
    }
    None
}

/// Takes the outputs of a successful run: file outputs are stored already (`stored`:
/// blob key → size), a stdout output is its log blob under its own key; outputs marked
/// `result` are parsed into the job's JSON result.
pub(super) async fn collect_outputs(
    runtime: &WorkerState,
    job: &Job,
    tool: &Tool,
    run: &RunOutcome,
    stored: BTreeMap<String, u64>,
) -> Result<(AttemptOutcome, Vec<StoredOutput>), String> {
    let id = job.id;
    let attempt = job.attempt;
    let mut taken = Vec::new();
    let mut result = Map::new();
    for output in &tool.outputs {
        let key = JobKeys::output(id, attempt, &output.name);
        let size = match output.source {
            OutputSource::Stdout => {
                let log = JobKeys::log(id, attempt, "stdout");
                patiently(runtime, || runtime.blobs.copy(&log, &key))
                    .await
                    .map_err(|error| blob_failure("store output", &error))?
            }
            // An optional output the program did not write.
            OutputSource::File => match stored.get(&key) {
                Some(size) => *size,
                None => continue,
            },
        };
        if output.result {
            let bytes = patiently(runtime, || runtime.blobs.read(&key))
                .await
                .map_err(|error| blob_failure("read output", &error))?;
            let (format, columns, header) = (output.format, output.columns.clone(), output.header);
            let parsed = tokio::task::spawn_blocking(move || {
                outputs::to_json(format, &columns, header, &bytes[..])
            })
            .await
            .map_err(|error| error.to_string())?;
            match parsed {
                Ok(value) => {
                    result.insert(output.name.clone(), value);
                }
                Err(error) => {
                    let message = format!(
                        "output `{}` is not valid {}: {}",
                        output.name,
                        output.format.as_str(),
                        error.0
                    );
                    return Ok((
                        output_failure(run, "output-unparseable", message),
                        Vec::new(),
                    ));
                }
            }
        }
        taken.push(StoredOutput {
            name: output.name.clone(),
            media_type: output.media_type.clone(),
            size,
        });
    }
    let body = serde_json::to_vec(&Value::Object(result)).expect("JSON serializes");
    let key = JobKeys::result(id, attempt);
    patiently(runtime, || runtime.blobs.put_bytes(&key, &body))
        .await
        .map_err(|error| blob_failure("store the result", &error))?;
    Ok((AttemptOutcome::Succeeded, taken))
}
