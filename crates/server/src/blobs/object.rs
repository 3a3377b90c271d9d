//! `ObjectBlobStore`: blobs in S3 (or any S3-compatible server), Azure Blob Storage or
//! Google Cloud Storage, through the `object_store` crate, for replicas and workers on
//! many hosts.
//!
//! `blobs = "s3://bucket/prefix"`, `"az://container/prefix"` or `"gs://bucket/prefix"`;
//! credentials and endpoints come from the variables each SDK documents (`AWS_*`,
//! `AZURE_*`, `GOOGLE_*`; e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a MinIO or
//! s3s server, `AZURE_STORAGE_USE_EMULATOR=true` for Azurite). A put returns once the
//! service has stored the object, which is what makes it durable. Files are uploaded as
//! a stream, in parts when larger than `PART_SIZE`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use tokio::io::AsyncWriteExt;

use super::{check_key, BlobError, BlobReader, BlobStore};

/// Bodies up to this size are one PUT; larger ones a multipart upload of parts this size.
const PART_SIZE: usize = 8 * 1024 * 1024;

pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    signer: Arc<dyn Signer>,
    /// Key prefix inside the bucket, empty or ending in `/`.
    prefix: String,
}

pub use super::is_object_url;

impl ObjectBlobStore {
    pub fn open(url: &str) -> Result<ObjectBlobStore, BlobError> {
        let parsed = url::Url::parse(url).map_err(|error| remote(format!("{url}: {error}")))?;
        let prefix = parsed.path().trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let bucket = format!(
            "{}://{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default()
        );
        let (store, signer): (Arc<dyn ObjectStore>, Arc<dyn Signer>) = match parsed.scheme() {
            "s3" => {
                let s3 = Arc::new(
                    AmazonS3Builder::from_env()
                        .with_url(&bucket)
                        .with_retry(retry())
                        .build()
                        .map_err(remote)?,
                );
                (s3.clone(), s3)
            }
            "az" => {
                let azure = Arc::new(
                    MicrosoftAzureBuilder::from_env()
                        .with_url(&bucket)
                        .with_retry(retry())
                        .build()
                        .map_err(remote)?,
                );
                (azure.clone(), azure)
            }
            "gs" => {
                let gcs = Arc::new(
                    GoogleCloudStorageBuilder::from_env()
                        .with_url(&bucket)
                        .with_retry(retry())
                        .build()
                        .map_err(remote)?,
                );
                (gcs.clone(), gcs)
            }
            other => return Err(remote(format!("unknown blob store scheme `{other}`"))),
        };
        Ok(ObjectBlobStore {
            store,
            signer,
            prefix,
        })
    }

    fn path(&self, key: &str) -> Result<ObjectPath, BlobError> {
        check_key(key)?;
        ObjectPath::parse(format!("{}{key}", self.prefix)).map_err(remote)
    }
}

fn remote(error: impl std::fmt::Display) -> BlobError {
    BlobError::Unavailable(error.to_string())
}

/// A request to the storage service is tried a few times within a few seconds, then
/// fails as `Unavailable`: a client waiting for a `202` gets a `503` within a bounded
/// time, and an attempt waits for the service itself (`worker/attempt.rs`).
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 3,
        retry_timeout: Duration::from_secs(4),
    }
}

fn mapped(key: &str) -> impl Fn(object_store::Error) -> BlobError + '_ {
    move |error| match error {
        object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
        other => remote(other),
    }
}

/// What a client downloading the blob directly (a presigned URL) is told it holds.
fn attributes(key: &str) -> Attributes {
    let mut attributes = Attributes::new();
    if key.ends_with(".json") {
        attributes.insert(Attribute::ContentType, "application/json".into());
    }
    attributes
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put_file(&self, key: &str, source: &std::path::Path) -> Result<u64, BlobError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(source).await?;
        let mut upload = BufWriter::with_capacity(self.store.clone(), path, PART_SIZE)
            .with_attributes(attributes(key));
        // The upload's failures are the service's (the local file was just written).
        let size = tokio::io::copy(&mut file, &mut upload)
            .await
            .map_err(remote)?;
        upload.shutdown().await.map_err(remote)?;
        Ok(size)
    }

    async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let options = PutOptions {
            attributes: attributes(key),
            ..PutOptions::default()
        };
        self.store
            .put_opts(&self.path(key)?, PutPayload::from(bytes.to_vec()), options)
            .await
            .map_err(mapped(key))?;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> Result<u64, BlobError> {
        let target = self.path(to)?;
        self.store
            .copy(&self.path(from)?, &target)
            .await
            .map_err(mapped(from))?;
        Ok(self.store.head(&target).await.map_err(mapped(to))?.size)
    }

    async fn copy_to_file(&self, key: &str, target: &std::path::Path) -> Result<u64, BlobError> {
        let got = self
            .store
            .get(&self.path(key)?)
            .await
            .map_err(mapped(key))?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::File::create(target).await?;
        let mut size = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(mapped(key))?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(size)
    }

    async fn open(&self, key: &str) -> Result<BlobReader, BlobError> {
        let got = self
            .store
            .get(&self.path(key)?)
            .await
            .map_err(mapped(key))?;
        let size = got.meta.size;
        let stream = got.into_stream().map_err(std::io::Error::other);
        Ok(BlobReader {
            size,
            reader: Box::new(tokio_util::io::StreamReader::new(stream)),
        })
    }

    async fn read(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let got = self
            .store
            .get(&self.path(key)?)
            .await
            .map_err(mapped(key))?;
        Ok(got.bytes().await.map_err(mapped(key))?.to_vec())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        let root = self.path(prefix)?;
        let locations = self
            .store
            .list(Some(&root))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(remote(error)),
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BlobError> {
        // Reachable and the credentials accepted: a missing key is a fine answer.
        match self.store.head(&self.path("health/probe")?).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(remote(error)),
        }
    }

    async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, BlobError> {
        let url = self
            .signer
            .signed_url(http::Method::GET, &self.path(key)?, expires_in)
            .await
            .map_err(remote)?;
        Ok(Some(url.to_string()))
    }
}
