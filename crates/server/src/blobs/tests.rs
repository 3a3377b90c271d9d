//! The behaviour every `BlobStore` must have, run against a local directory always, and
//! against a real S3-compatible server (s3s-fs, which checks signatures) and Azurite when
//! `BATCHGATE_TEST_S3_URL` / `BATCHGATE_TEST_AZURE_URL` name a bucket (CI sets both, with
//! the `AWS_*` / `AZURE_*` variables that object_store reads).

use super::*;

macro_rules! blob_conformance {
    (#[$gate:meta] ; $make:expr) => {
        blob_conformance!(@gated [$gate] $make);
    };
    (@gated [$($gate:meta)?] $make:expr) => {
        #[tokio::test]
        $(#[$gate])?
        async fn put_read_copy_and_delete() {
            use tokio::io::AsyncReadExt;
            let (blobs, dir) = $make;
            let root = format!("jobs/{}", uuid::Uuid::now_v7());
            let key = |rest: &str| format!("{root}/{rest}");
            blobs.put_bytes(&key("result.json"), b"[1]").await.unwrap();
            assert_eq!(blobs.read(&key("result.json")).await.unwrap(), b"[1]");
            let source = dir.path().join("upload");
            std::fs::write(&source, b"hello").unwrap();
            assert_eq!(
                blobs.put_file(&key("inputs/data"), &source).await.unwrap(),
                5
            );
            let mut opened = blobs.open(&key("inputs/data")).await.unwrap();
            let mut text = String::new();
            opened.reader.read_to_string(&mut text).await.unwrap();
            assert_eq!((opened.size, text.as_str()), (5, "hello"));
            let copy = dir.path().join("copy");
            blobs
                .copy_to_file(&key("inputs/data"), &copy)
                .await
                .unwrap();
            assert_eq!(std::fs::read(&copy).unwrap(), b"hello");
            // A blob copied under a second key outlives the first key's deletion and is
            // not changed when the first key is written again.
            assert_eq!(
                blobs
                    .copy(&key("inputs/data"), &key("attempts/1/outputs/out"))
                    .await
                    .unwrap(),
                5
            );
            blobs
                .put_bytes(&key("inputs/data"), b"other")
                .await
                .unwrap();
            blobs.delete_prefix(&key("inputs")).await.unwrap();
            assert!(blobs
                .read(&key("inputs/data"))
                .await
                .unwrap_err()
                .is_not_found());
            assert_eq!(
                blobs.read(&key("attempts/1/outputs/out")).await.unwrap(),
                b"hello"
            );
            blobs.delete_prefix(&root).await.unwrap();
            assert!(blobs
                .read(&key("result.json"))
                .await
                .unwrap_err()
                .is_not_found());
            assert!(blobs
                .open(&key("result.json"))
                .await
                .err()
                .unwrap()
                .is_not_found());
            // Deleting what is gone already is fine.
            blobs.delete_prefix(&root).await.unwrap();
            blobs.ping().await.unwrap();
        }

        #[tokio::test]

        $(#[$gate])?
        async fn several_files_are_stored_at_once_in_order() {
            let (blobs, dir) = $make;
            let root = format!("jobs/{}", uuid::Uuid::now_v7());
            let files = [
                ("logs/stdout", "out"),
                ("logs/stderr", ""),
                ("outputs/copy", "a copy"),
            ]
            .iter()
            .map(|(key, text)| {
                let source = dir.path().join(key.replace('/', "-"));
                std::fs::write(&source, text).unwrap();
                (format!("{root}/{key}"), source)
            })
            .collect::<Vec<_>>();
            assert_eq!(blobs.put_files(&files).await.unwrap(), vec![3, 0, 6]);
            for ((key, _), text) in files.iter().zip(["out", "", "a copy"]) {
                assert_eq!(blobs.read(key).await.unwrap(), text.as_bytes());
            }
            let missing = vec![(format!("{root}/logs/other"), dir.path().join("none"))];
            assert!(blobs.put_files(&missing).await.is_err());
            blobs.delete_prefix(&root).await.unwrap();
        }

        #[tokio::test]

        $(#[$gate])?
        async fn deleting_an_attempt_leaves_the_others() {
            let (blobs, _dir) = $make;
            let root = format!("jobs/{}", uuid::Uuid::now_v7());
            for attempt in [1, 10] {
                let key = format!("{root}/attempts/{attempt}/outputs/out");
                blobs.put_bytes(&key, b"x").await.unwrap();
            }
            blobs
                .put_bytes(&format!("{root}/control"), b"c")
                .await
                .unwrap();
            blobs
                .delete_prefix(&format!("{root}/attempts/1"))
                .await
                .unwrap();
            let first = blobs.read(&format!("{root}/attempts/1/outputs/out")).await;
            assert!(first.unwrap_err().is_not_found());
            let tenth = blobs.read(&format!("{root}/attempts/10/outputs/out")).await;
            assert_eq!(tenth.unwrap(), b"x");
            assert_eq!(blobs.read(&format!("{root}/control")).await.unwrap(), b"c");
            blobs.delete_prefix(&root).await.unwrap();
        }

        #[tokio::test]

        $(#[$gate])?
        async fn a_large_file_streams_in_and_out_intact() {
            use tokio::io::AsyncReadExt;
            let (blobs, dir) = $make;
            let key = format!("jobs/{}/inputs/big", uuid::Uuid::now_v7());
            // Larger than an upload part: a multipart upload for object storage.
            let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let source = dir.path().join("big");
            std::fs::write(&source, &data).unwrap();
            assert_eq!(
                blobs.put_file(&key, &source).await.unwrap(),
                data.len() as u64
            );
            let mut opened = blobs.open(&key).await.unwrap();
            assert_eq!(opened.size, data.len() as u64);
            let mut back = Vec::new();
            opened.reader.read_to_end(&mut back).await.unwrap();
            assert!(back == data, "the blob read back differs");
            let target = dir.path().join("back");
            blobs.copy_to_file(&key, &target).await.unwrap();
            assert!(std::fs::read(&target).unwrap() == data);
        }

        #[tokio::test]

        $(#[$gate])?
        async fn keys_cannot_escape_the_root() {
            let (blobs, _dir) = $make;
            for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b"] {
                assert!(blobs.put_bytes(key, b"x").await.is_err(), "key {key}");
            }
        }
    };
    ($make:expr) => {
        blob_conformance!(@gated [] $make);
    };
}

mod local {
    use super::*;

    blob_conformance!({
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobStore::open(&dir.path().join("blobs"))
            .await
            .unwrap();
        assert!(blobs
            .presigned_get("jobs/x/result.json", Duration::from_secs(60))
            .await
            .unwrap()
            .is_none());
        (blobs, dir)
    });
}

/// An object store named by `variable`, or a visible skip.
#[cfg(feature = "object-store")]
fn object_store(variable: &str) -> Option<object::ObjectBlobStore> {
    match std::env::var(variable) {
        Ok(url) => Some(object::ObjectBlobStore::open(&url).unwrap()),
        Err(_) => {
            if std::env::var_os("BATCHGATE_TEST_STRICT").is_some() {
                panic!("required for CI but missing: {variable}");
            }
            eprintln!("SKIPPED: set {variable} to run the object storage tests");
            None
        }
    }
}

/// The store's own presigned URL serves the blob without credentials; a tampered one is
/// refused by the storage service.
#[cfg(feature = "object-store")]
async fn presigned_urls_work_and_are_checked(blobs: &dyn BlobStore) {
    let key = format!("jobs/{}/result.json", uuid::Uuid::now_v7());
    blobs.put_bytes(&key, br#"{"ok":true}"#).await.unwrap();
    let url = blobs
        .presigned_get(&key, Duration::from_secs(300))
        .await
        .unwrap()
        .expect("object storage presigns");
    let client = reqwest::Client::new();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), br#"{"ok":true}"#);
    // Another key under the same signature.
    let forged = url.replacen("result.json", "other.json", 1);
    let response = client.get(&forged).send().await.unwrap();
    assert_eq!(response.status(), 403, "{forged}");
    blobs
        .delete_prefix(key.rsplit_once('/').unwrap().0)
        .await
        .unwrap();
}

#[cfg(feature = "object-store")]
mod s3 {
    use super::*;

    blob_conformance!(
        #[cfg_attr(
            not(gate_s3),
            ignore = "needs S3: set BATCHGATE_TEST_S3_URL=s3://bucket/prefix and the AWS_* variables"
        )];
        match object_store("BATCHGATE_TEST_S3_URL") {
            Some(blobs) => (blobs, tempfile::tempdir().unwrap()),
            None => return,
        }
    );

    #[tokio::test]
    #[cfg_attr(
        not(gate_s3),
        ignore = "needs S3: set BATCHGATE_TEST_S3_URL=s3://bucket/prefix and the AWS_* variables"
    )]
    async fn presigned() {
        if let Some(blobs) = object_store("BATCHGATE_TEST_S3_URL") {
            presigned_urls_work_and_are_checked(&blobs).await;
        }
    }
}

#[cfg(feature = "object-store")]
mod azure {
    use super::*;

    blob_conformance!(
        #[cfg_attr(
            not(gate_azure),
            ignore = "needs Azure Blob Storage: set BATCHGATE_TEST_AZURE_URL=az://container/prefix and the AZURE_* variables"
        )];
        match object_store("BATCHGATE_TEST_AZURE_URL") {
            Some(blobs) => (blobs, tempfile::tempdir().unwrap()),
            None => return,
        }
    );

    #[tokio::test]
    #[cfg_attr(
        not(gate_azure),
        ignore = "needs Azure Blob Storage: set BATCHGATE_TEST_AZURE_URL=az://container/prefix and the AZURE_* variables"
    )]
    async fn presigned() {
        if let Some(blobs) = object_store("BATCHGATE_TEST_AZURE_URL") {
            presigned_urls_work_and_are_checked(&blobs).await;
        }
    }
}
