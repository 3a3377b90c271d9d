//! Job inputs, outputs and logs, by key (`jobs/<id>/inputs/<name>`,
//! `jobs/<id>/attempts/<n>/outputs/<name>`, …).
//!
//! `LocalBlobStore` keeps them in a directory and fsyncs file and directory before a put
//! returns: an accepted job's inputs survive a crash (guarantee 1). object_store's own
//! local backend does not fsync, which is why the default backend is written here.
//! `object::ObjectBlobStore` keeps them in S3, Azure Blob Storage or GCS.

#[cfg(feature = "object-store")]
pub mod object;

/// True for the URLs `object::ObjectBlobStore` understands (S3, Azure Blob Storage, GCS),
/// whether or not this binary was built with it (the `object-store` feature).
pub fn is_object_url(url: &str) -> bool {
    ["s3://", "az://", "gs://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncRead;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob `{0}` does not exist")]
    NotFound(String),
    #[error("blob storage failed: {0}")]
    Io(#[from] std::io::Error),
    /// The storage service did not answer or answered with its own failure (an object
    /// store down, throttling, a network outage): it may pass.
    #[error("blob storage is unavailable: {0}")]
    Unavailable(String),
}

impl BlobError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BlobError::NotFound(_))
    }

    /// What went wrong, in words a client may read (no URL, path or key).
    pub fn summary(&self) -> &'static str {
        match self {
            BlobError::NotFound(_) => "a stored file is missing",
            BlobError::Io(error) if crate::datadir::is_full(error) => "the server's disk is full",
            BlobError::Io(_) => "the server's storage failed",
            BlobError::Unavailable(_) => "the blob storage is unavailable",
        }
    }

    /// Trouble that may pass: the service is down, or the disk is full.
    pub fn is_retryable(&self) -> bool {
        match self {
            BlobError::Unavailable(_) => true,
            BlobError::Io(error) => crate::datadir::is_full(error),
            BlobError::NotFound(_) => false,
        }
    }
}

/// A readable blob and its size.
pub struct BlobReader {
    pub size: u64,
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the local file `source` under `key`, durably. The source may be moved.
    async fn put_file(&self, key: &str, source: &Path) -> Result<u64, BlobError>;
    /// Stores several local files (key, source), durably, as `put_file` does each;
    /// returns their sizes in order. A store may make them durable together (one
    /// directory sync for files that share a directory).
    async fn put_files(&self, files: &[(String, PathBuf)]) -> Result<Vec<u64>, BlobError> {
        let mut sizes = Vec::with_capacity(files.len());
        for (key, source) in files {
            sizes.push(self.put_file(key, source).await?);
        }
        Ok(sizes)
    }
    async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    /// Stores a copy of the blob `from` under `to`, durably; returns its size.
    async fn copy(&self, from: &str, to: &str) -> Result<u64, BlobError>;
    /// Copies the blob into the local file `target` (for a work directory).
    async fn copy_to_file(&self, key: &str, target: &Path) -> Result<u64, BlobError>;
    async fn open(&self, key: &str) -> Result<BlobReader, BlobError>;
    async fn read(&self, key: &str) -> Result<Vec<u8>, BlobError>;
    /// Deletes every blob whose key starts with `prefix/`.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError>;
    async fn ping(&self) -> Result<(), BlobError>;
    /// A URL that reads the blob without credentials until `expires_in` has passed,
    /// signed by the storage service itself; `None` when the store cannot make one (a
    /// local directory: the API's own signed URLs serve it instead).
    async fn presigned_get(
        &self,
        _key: &str,
        _expires_in: Duration,
    ) -> Result<Option<String>, BlobError> {
        Ok(None)
    }
}

/// Keys are built by the server from ids and declared names; this check keeps a bug from
/// ever escaping a store's root.
fn check_key(key: &str) -> Result<(), BlobError> {
    let clean = !key.is_empty()
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !clean {
        return Err(BlobError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad blob key `{key}`"),
        )));
    }
    Ok(())
}

/// The keys of a job's blobs. The attempt number separates attempts, so that only the
/// winning attempt's outputs are ever referenced.
pub struct JobKeys;

impl JobKeys {
    pub fn job(id: uuid::Uuid) -> String {
        format!("jobs/{id}")
    }
    pub fn input(id: uuid::Uuid, name: &str) -> String {
        format!("jobs/{id}/inputs/{name}")
    }
    pub fn control(id: uuid::Uuid) -> String {
        format!("jobs/{id}/control")
    }
    pub fn attempt(id: uuid::Uuid, attempt: u32) -> String {
        format!("jobs/{id}/attempts/{attempt}")
    }
    pub fn output(id: uuid::Uuid, attempt: u32, name: &str) -> String {
        format!("jobs/{id}/attempts/{attempt}/outputs/{name}")
    }
    pub fn result(id: uuid::Uuid, attempt: u32) -> String {
        format!("jobs/{id}/attempts/{attempt}/result.json")
    }
    pub fn log(id: uuid::Uuid, attempt: u32, stream: &str) -> String {
        format!("jobs/{id}/attempts/{attempt}/logs/{stream}")
    }
}

pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// The store in `root`, which only the server's user may enter (0700): every job's
    /// inputs and outputs are in it.
    pub async fn open(root: &Path) -> Result<LocalBlobStore, BlobError> {
        tokio::fs::create_dir_all(root).await?;
        tokio::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .await?;
        Ok(LocalBlobStore {
            root: root.to_owned(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Runs one operation's filesystem calls on one thread of the blocking pool: a put is a
/// handful of system calls, and a hop per call (as `tokio::fs` makes) cost more than the
/// calls themselves (bench/README.md).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BlobError::Io(std::io::Error::other(error)))?
}

fn prepare_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent),
        None => Ok(()),
    }
}

fn not_found(key: &str) -> impl Fn(std::io::Error) -> BlobError + '_ {
    move |error| match error.kind() {
        std::io::ErrorKind::NotFound => BlobError::NotFound(key.to_owned()),
        _ => BlobError::Io(error),
    }
}

/// fsyncs the directory that holds `path`'s name.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// fsyncs a file; returns its size.
fn sync_file(path: &Path) -> std::io::Result<u64> {
    let file = fs::File::open(path)?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// fsyncs a file and the directory that holds its name; returns the file's size.
fn sync_path(path: &Path) -> std::io::Result<u64> {
    let size = sync_file(path)?;
    sync_parent(path)?;
    Ok(size)
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put_file(&self, key: &str, source: &Path) -> Result<u64, BlobError> {
        let sizes = self
            .put_files(&[(key.to_owned(), source.to_owned())])
            .await?;
        Ok(sizes[0])
    }

    async fn put_files(&self, files: &[(String, PathBuf)]) -> Result<Vec<u64>, BlobError> {
        let moves = files
            .iter()
            .map(|(key, source)| Ok((source.clone(), self.path(key)?)))
            .collect::<Result<Vec<_>, BlobError>>()?;
        blocking(move || {
            let mut sizes = Vec::with_capacity(moves.len());
            let mut directories = std::collections::BTreeSet::new();
            for (source, target) in &moves {
                prepare_parent(target)?;
                if fs::rename(source, target).is_err() {
                    fs::copy(source, target)?;
                }
                sizes.push(sync_file(target)?);
                directories.extend(target.parent().map(Path::to_owned));
            }
            for directory in directories {
                fs::File::open(directory)?.sync_all()?;
            }
            Ok(sizes)
        })
        .await
    }

    async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let target = self.path(key)?;
        let bytes = bytes.to_vec();
        blocking(move || {
            prepare_parent(&target)?;
            let temporary = target.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
            let mut file = fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temporary, &target)?;
            sync_parent(&target)?;
            Ok(())
        })
        .await
    }

    /// A hard link: blobs are never modified in place (every write is a new file renamed
    /// over the key), so two keys may share one file, and no inode or data is copied.
    async fn copy(&self, from: &str, to: &str) -> Result<u64, BlobError> {
        let (source, target) = (self.path(from)?, self.path(to)?);
        let from = from.to_owned();
        blocking(move || {
            prepare_parent(&target)?;
            let _ = fs::remove_file(&target);
            if fs::hard_link(&source, &target).is_err() {
                fs::copy(&source, &target).map_err(not_found(&from))?;
                return Ok(sync_path(&target)?);
            }
            sync_parent(&target)?;
            Ok(fs::metadata(&target)?.len())
        })
        .await
    }

    async fn copy_to_file(&self, key: &str, target: &Path) -> Result<u64, BlobError> {
        let source = self.path(key)?;
        let (key, target) = (key.to_owned(), target.to_owned());
        blocking(move || fs::copy(&source, &target).map_err(not_found(&key))).await
    }

    async fn open(&self, key: &str) -> Result<BlobReader, BlobError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        let (file, size) = blocking(move || {
            let file = fs::File::open(&path).map_err(not_found(&key))?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await?;
        Ok(BlobReader {
            size,
            reader: Box::new(tokio::fs::File::from_std(file)),
        })
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || fs::read(&path).map_err(not_found(&key))).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        let path = self.path(prefix)?;
        blocking(move || match fs::remove_dir_all(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        })
        .await
    }

    async fn ping(&self) -> Result<(), BlobError> {
        let probe = format!("health/{}", uuid::Uuid::now_v7().simple());
        self.put_bytes(&probe, b"ok").await?;
        self.delete_prefix("health").await
    }
}

#[cfg(test)]
mod tests;
