//! The three body kinds of a submit (JSON, multipart, a raw body), each streamed to
//! staging files with a byte budget counted after decompression and converted into the
//! tool's input files; and the staging files' cleanup.

use super::*;

/// What a request body turned into.
pub(super) struct Received {
    pub(super) inputs: Vec<StoredInput>,
    pub(super) parameters: Map<String, Value>,
    /// SHA-256 of the media type and the (decompressed) body, for idempotency.
    pub(super) hash: String,
}

pub(super) async fn receive(
    tool: &Arc<Tool>,
    request: Request,
    media_type: Option<&str>,
    query: &[(String, String)],
    staging: &Staging,
    limit: u64,
) -> Result<Received, ApiError> {
    let Some(media_type) = media_type else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            "a Content-Type header is required (application/json, multipart/form-data, or the input's own type)",
        ));
    };
    let mut hasher = Sha256::new();
    hasher.update(media_type.as_bytes());
    hasher.update([0]);

    if media_type == "application/json" || media_type.ends_with("+json") {
        if !query.is_empty() {
            return Err(ApiError::bad_request(
                Code::UnexpectedQuery,
                "with a JSON body, parameters go in the body's `parameters`, not the query string",
            ));
        }
        return receive_json(tool, request, staging, limit, hasher).await;
    }

    if media_type == "multipart/form-data" {
        let multipart = Multipart::from_request(request, &())
            .await
            .map_err(|rejection| {
                ApiError::bad_request(Code::MalformedMultipart, rejection.body_text())
            })?;
        return receive_multipart(tool, multipart, staging, limit, hasher).await;
    }

    receive_raw(tool, request, media_type, query, staging, limit, hasher).await
}

/// A JSON body: staged whole (within `limit`), then parsed one record at a time into the
/// inputs' files.
async fn receive_json(
    tool: &Arc<Tool>,
    request: Request,
    staging: &Staging,
    limit: u64,
    mut hasher: Sha256,
) -> Result<Received, ApiError> {
    let body_path = staging.files.body();
    let mut counter = Budget::new(limit);
    stream_body(request.into_body(), &body_path, &mut counter, &mut hasher).await?;
    let parsing = tool.clone();
    let files = staging.files.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let file = std::io::BufReader::new(std::fs::File::open(&body_path)?);
        let mut sinks = FileSinks {
            tool: &parsing,
            files: &files,
            sizes: Vec::new(),
        };
        let result = parse_json_request(file, &mut sinks);
        let _ = std::fs::remove_file(&body_path);
        result.map(|(parameters, _)| (parameters, sinks.sizes))
    })
    .await
    .map_err(ApiError::internal)?;
    let (parameters, inputs) = parsed.map_err(request_error)?;
    // An input given as the file's text gets the checks a file upload gets (records are
    // written with the declared header, which passes at once).
    for input in &inputs {
        if let Some(spec) = tool.input(&input.name) {
            normalize(&spec.layout, &staging.files.input(&input.name), &input.name).await?;
        }
    }
    Ok(Received {
        inputs,
        parameters,
        hash: hex::encode(hasher.finalize()),
    })
}

/// Any other media type: the body is the tool's single input, the parameters come from
/// the query string.
async fn receive_raw(
    tool: &Arc<Tool>,
    request: Request,
    media_type: &str,
    query: &[(String, String)],
    staging: &Staging,
    limit: u64,
    mut hasher: Sha256,
) -> Result<Received, ApiError> {
    let [input] = tool.inputs.as_slice() else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            format!(
                "`{media_type}`: this tool takes {} inputs; send application/json or multipart/form-data",
                tool.inputs.len()
            ),
        ));
    };
    if !accepts(&input.media_types, media_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::UnsupportedMediaType,
            format!(
                "`{media_type}` is not accepted; send application/json, multipart/form-data or one of: {}",
                input.media_types.join(", ")
            ),
        ));
    }
    let path = staging.files.input(&input.name);
    let mut counter = Budget::new(limit);
    let size = stream_body(request.into_body(), &path, &mut counter, &mut hasher).await?;
    normalize(&input.layout, &path, &input.name).await?;
    for (key, value) in query {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    Ok(Received {
        inputs: vec![StoredInput {
            name: input.name.clone(),
            size,
        }],
        parameters: tool.parameters_from_query(query),
        hash: hex::encode(hasher.finalize()),
    })
}

pub(super) async fn receive_multipart(
    tool: &Arc<Tool>,
    mut multipart: Multipart,
    staging: &Staging,
    limit: u64,
    mut hasher: Sha256,
) -> Result<Received, ApiError> {
    let mut budget = Budget::new(limit);
    let mut parameters = None;
    let mut inputs: Vec<StoredInput> = Vec::new();
    let malformed = |error: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(Code::MalformedMultipart, error.body_text())
    };
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let part_type = field.content_type().map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        hasher.update(name.as_bytes());
        hasher.update([0]);
        if name == "parameters" {
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                budget.take(chunk.len())?;
                hasher.update(&chunk);
                text.extend_from_slice(&chunk);
            }
            let value: Value = serde_json::from_slice(&text).map_err(|error| {
                ApiError::bad_request(
                    Code::MalformedJson,
                    format!("part `parameters` is not valid JSON: {error}"),
                )
            })?;
            match value {
                Value::Object(map) => parameters = Some(map),
                _ => {
                    return Err(ApiError::unprocessable(FieldFault::new(
                        "/parameters",
                        "must be an object",
                    )))
                }
            }
            continue;
        }
        let path_of = |n: &str| format!("/inputs/{}", pointer_token(n));
        let Some(input) = tool.input(&name) else {
            return Err(ApiError::unprocessable(FieldFault::new(
                path_of(&name),
                "this tool has no such input (multipart parts are named after inputs, plus `parameters`)",
            )));
        };
        if inputs.iter().any(|stored| stored.name == name) {
            return Err(ApiError::unprocessable(FieldFault::new(
                path_of(&name),
                "input given twice",
            )));
        }
        let target = staging.files.input(&input.name);
        let as_json =
            part_type.as_deref() == Some("application/json") && input.layout.format != Format::Json;
        let raw_path = if as_json {
            staging.files.json_part(&input.name)
        } else {
            target.clone()
        };
        let io = |error: std::io::Error| ApiError::from_io(&error);
        let mut file = tokio::fs::File::create(&raw_path).await.map_err(io)?;
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            budget.take(chunk.len())?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        if as_json {
            convert_json_part(tool, &input.name, &raw_path, &staging.files).await?;
        } else {
            normalize(&input.layout, &target, &input.name).await?;
        }
        let size = tokio::fs::metadata(&target).await.map_err(io)?.len();
        inputs.push(StoredInput {
            name: input.name.clone(),
            size,
        });
    }
    Ok(Received {
        inputs,
        parameters: parameters.unwrap_or_default(),
        hash: hex::encode(hasher.finalize()),
    })
}

/// A JSON part for a non-JSON input: records (or text) converted like in a JSON body.
pub(super) async fn convert_json_part(
    tool: &Arc<Tool>,
    name: &str,
    source: &Path,
    files: &StagedFiles,
) -> Result<(), ApiError> {
    let (tool, name, source, files) = (
        tool.clone(),
        name.to_owned(),
        source.to_owned(),
        files.clone(),
    );
    let wrapped = tokio::task::spawn_blocking(move || -> Result<(), RequestError> {
        // Parse `{"inputs": {name: <part>}}` without building it: chain the part between
        // a prefix and a suffix, and convert it like an input of a JSON body.
        let prefix = format!(
            "{{\"inputs\":{{{}:",
            serde_json::to_string(&name).expect("a string serializes")
        );
        let reader = std::io::Read::chain(
            std::io::Read::chain(
                prefix.as_bytes(),
                std::io::BufReader::new(std::fs::File::open(&source)?),
            ),
            &b"}}"[..],
        );
        let mut sinks = FileSinks {
            tool: &tool,
            files: &files,
            sizes: Vec::new(),
        };
        parse_json_request(reader, &mut sinks)?;
        let _ = std::fs::remove_file(&source);
        Ok(())
    })
    .await
    .map_err(ApiError::internal)?;
    wrapped.map_err(request_error)
}

/// A JSON body (or part) that could not be converted: 400 if it is not JSON, 422 if it is
/// JSON the tool does not take.
pub(super) fn request_error(error: RequestError) -> ApiError {
    match error {
        RequestError::Malformed(detail) => ApiError::bad_request(
            Code::MalformedJson,
            format!("the body is not valid JSON: {detail}"),
        ),
        RequestError::Invalid(fault) => ApiError::unprocessable(fault),
        RequestError::Io(error) => ApiError::from_io(&error),
    }
}

/// A csv/tsv input given as a file: its header must name the declared columns (in any
/// order; the file is rewritten in the declared order).
pub(super) async fn normalize(layout: &Layout, path: &Path, name: &str) -> Result<(), ApiError> {
    if !(layout.format.is_tabular() && layout.header && !layout.columns.is_empty()) {
        return Ok(());
    }
    let (layout, path, pointer) = (
        layout.clone(),
        path.to_owned(),
        format!("/inputs/{}", pointer_token(name)),
    );
    tokio::task::spawn_blocking(move || normalize_tabular_file(&layout, &path, &pointer))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// Input files written into the staging directory, one per input, named by the server.
pub(super) struct FileSinks<'a> {
    tool: &'a Tool,
    files: &'a StagedFiles,
    sizes: Vec<StoredInput>,
}

impl InputSinks for FileSinks<'_> {
    type Sink = std::io::BufWriter<std::fs::File>;
    fn layout(&self, name: &str) -> Option<Layout> {
        self.tool.input(name).map(|input| input.layout.clone())
    }
    fn open(&mut self, name: &str) -> std::io::Result<Self::Sink> {
        Ok(std::io::BufWriter::new(std::fs::File::create(
            self.files.input(name),
        )?))
    }
    fn close(&mut self, name: &str, sink: Self::Sink) -> std::io::Result<()> {
        let file = sink.into_inner().map_err(|error| error.into_error())?;
        let size = file.metadata()?.len();
        self.sizes.push(StoredInput {
            name: name.to_owned(),
            size,
        });
        Ok(())
    }
}

/// Counts received bytes against the cap.
pub(super) struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Budget {
        Budget { limit, used: 0 }
    }
    pub(super) fn take(&mut self, bytes: usize) -> Result<(), ApiError> {
        self.used += bytes as u64;
        if self.used > self.limit {
            return Err(ApiError::too_large(
                self.limit,
                "the request body (after decompression)",
            ));
        }
        Ok(())
    }
}

/// Bytes of a body held in memory before they are written: a small body (most job
/// requests) reaches its file in one blocking call, a large one in steps of this size.
pub(super) const BODY_BUFFER: usize = 256 * 1024;

/// Streams a body into `path`, hashing and counting; holds at most `BODY_BUFFER` bytes
/// and a chunk.
pub(super) async fn stream_body(
    body: Body,
    path: &Path,
    budget: &mut Budget,
    hasher: &mut Sha256,
) -> Result<u64, ApiError> {
    let mut file: Option<std::fs::File> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            // A body over a decompression cap or a broken connection ends up here.
            ApiError::bad_request(
                Code::BodyReadFailed,
                format!("the request body could not be read: {error}"),
            )
        })?;
        budget.take(chunk.len())?;
        hasher.update(&chunk);
        pending.extend_from_slice(&chunk);
        if pending.len() >= BODY_BUFFER {
            let written;
            (file, written) = write_body(file, path, pending).await?;
            pending = written;
        }
    }
    write_body(file, path, pending).await?;
    Ok(budget.used)
}

/// Appends `bytes` to the body's file (created on the first call) in one blocking call;
/// returns the file and the emptied buffer for reuse.
pub(super) async fn write_body(
    file: Option<std::fs::File>,
    path: &Path,
    mut bytes: Vec<u8>,
) -> Result<(Option<std::fs::File>, Vec<u8>), ApiError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = match file {
            Some(file) => file,
            None => std::fs::File::create(&path)?,
        };
        std::io::Write::write_all(&mut file, &bytes)?;
        bytes.clear();
        Ok::<_, std::io::Error>((Some(file), bytes))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|error| ApiError::from_io(&error))
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The media type of the body, lowercased, without parameters.
pub(super) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (!essence.is_empty()).then_some(essence)
}

pub(super) fn accepts(accepted: &[String], media_type: &str) -> bool {
    accepted.iter().any(|candidate| {
        candidate == media_type
            || candidate == "*/*"
            || candidate
                .strip_suffix("/*")
                .is_some_and(|family| media_type.split('/').next() == Some(family))
    })
}

/// Where a request's files wait until its job is accepted: `<staging>/<job id>-<name>`,
/// names the server makes from the tool's declared inputs. Files, not a directory per
/// request: a directory made and removed per job costs an inode allocation and leaves a
/// freed inode that some filesystems search past for minutes (bench/README.md).
#[derive(Clone)]
pub(super) struct StagedFiles {
    root: PathBuf,
    id: Uuid,
}

impl StagedFiles {
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{}-{name}", self.id))
    }

    /// Input `name`, as the program will get it.
    pub(super) fn input(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    /// A JSON request body, before its inputs are taken out of it.
    pub(super) fn body(&self) -> PathBuf {
        self.path(".body.json")
    }

    /// A multipart part of input `name` sent as JSON, before its conversion.
    pub(super) fn json_part(&self, name: &str) -> PathBuf {
        self.path(&format!(".{name}.json"))
    }
}

/// A request's staged files, removed when the request ends (accepted inputs were moved
/// out by then).
pub(super) struct Staging {
    pub(super) files: StagedFiles,
    /// Every file a request for this tool may stage.
    paths: Vec<PathBuf>,
}

impl Staging {
    pub(super) fn new(root: &Path, id: Uuid, tool: &Tool) -> Staging {
        let files = StagedFiles {
            root: root.to_owned(),
            id,
        };
        let mut paths = vec![files.body()];
        for input in &tool.inputs {
            paths.push(files.input(&input.name));
            paths.push(files.json_part(&input.name));
        }
        Staging { files, paths }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}
