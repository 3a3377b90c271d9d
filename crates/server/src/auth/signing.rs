//! Signed result URLs (like an Azure SAS): a result or output readable without a key
//! until it expires. The signature is HMAC-SHA256 over the method, path, job, owner,
//! expiry and secret generation, each field length-prefixed so that no two different
//! field lists give the same message. Secrets live in the store and rotate: the newest
//! signs, the newest two verify.

use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::store::{JobStore, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// The query fields of a signed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Unix seconds.
    pub expires: i64,
    /// The secret's generation.
    pub kid: u32,
    /// Hex HMAC.
    pub sig: String,
}

impl Signature {
    pub fn to_query(&self) -> String {
        format!("expires={}&kid={}&sig={}", self.expires, self.kid, self.sig)
    }
}

/// Why a signed URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Expired,
    Invalid,
}

/// Secrets by generation, newest first.
type Secrets = Vec<(u32, Vec<u8>)>;

/// The signing secrets, cached from the store.
#[derive(Clone)]
pub struct Signer {
    store: Arc<dyn JobStore>,
    /// Newest first: (generation, secret bytes).
    secrets: Arc<RwLock<Secrets>>,
}

impl Signer {
    /// Loads the secrets, creating the first one if the store has none.
    pub async fn load(store: Arc<dyn JobStore>) -> Result<Signer, StoreError> {
        let signer = Signer {
            store,
            secrets: Arc::default(),
        };
        signer.refresh().await?;
        if signer.current().is_none() {
            signer.rotate().await?;
        }
        Ok(signer)
    }

    /// Rereads the secrets (another process may have rotated them).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut secrets = Vec::new();
        for (kid, secret) in self.store.signing_secrets(2).await? {
            let bytes =
                hex::decode(&secret).map_err(|_| StoreError::Corrupt("signing secret".into()))?;
            secrets.push((kid, bytes));
        }
        *self.secrets.write().expect("secrets lock") = secrets;
        Ok(())
    }

    /// Adds a new secret; the previous one still verifies.
    pub async fn rotate(&self) -> Result<u32, StoreError> {
        let secret = hex::encode(super::keys::random_bytes::<32>());
        let kid = self
            .store
            .add_signing_secret(&secret, crate::jobs::now())
            .await?;
        self.refresh().await?;
        Ok(kid)
    }

    fn current(&self) -> Option<(u32, Vec<u8>)> {
        self.secrets.read().expect("secrets lock").first().cloned()
    }

    fn secret(&self, kid: u32) -> Option<Vec<u8>> {
        self.secrets
            .read()
            .expect("secrets lock")
            .iter()
            .find(|(generation, _)| *generation == kid)
            .map(|(_, secret)| secret.clone())
    }

    pub fn sign(&self, path: &str, job: Uuid, owner: &str, expires: i64) -> Signature {
        let (kid, secret) = self.current().expect("a signing secret is loaded");
        let message = message("GET", path, job, owner, expires, kid);
        let sig = hex::encode(hmac(&secret, &message).finalize().into_bytes());
        Signature { expires, kid, sig }
    }

    /// Checks a signature for `path` of `job`; the secret list is reread once when the
    /// generation is unknown (a rotation by another replica).
    pub async fn verify(
        &self,
        method: &str,
        path: &str,
        job: Uuid,
        owner: &str,
        signature: &Signature,
        now: i64,
    ) -> Result<(), Refused> {
        if self.secret(signature.kid).is_none() {
            let _ = self.refresh().await;
        }
        let secret = self.secret(signature.kid).ok_or(Refused::Invalid)?;
        let given = hex::decode(&signature.sig).map_err(|_| Refused::Invalid)?;
        let mut hmac = HmacSha256::new_from_slice(&secret).expect("HMAC takes any key length");
        hmac.update(&message(
            method,
            path,
            job,
            owner,
            signature.expires,
            signature.kid,
        ));
        // Constant-time comparison.
        hmac.verify_slice(&given).map_err(|_| Refused::Invalid)?;
        if signature.expires <= now {
            return Err(Refused::Expired);
        }
        Ok(())
    }
}

fn message(method: &str, path: &str, job: Uuid, owner: &str, expires: i64, kid: u32) -> Vec<u8> {
    let mut message = Vec::new();
    for field in [
        method,
        path,
        &job.to_string(),
        owner,
        &expires.to_string(),
        &kid.to_string(),
    ] {
        message.extend_from_slice(&(field.len() as u64).to_be_bytes());
        message.extend_from_slice(field.as_bytes());
    }
    message
}

fn hmac(secret: &[u8], message: &[u8]) -> HmacSha256 {
    let mut hmac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    hmac.update(message);
    hmac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unambiguous() {
        let job = Uuid::nil();
        assert_ne!(
            message("GET", "/a", job, "bc", 1, 1),
            message("GET", "/ab", job, "c", 1, 1)
        );
        assert_ne!(
            message("GET", "/a", job, "", 11, 1),
            message("GET", "/a", job, "1", 1, 1)
        );
    }
}
