//! API keys: `bgk_<id>_<secret>`. The id (12 hex digits) is public: it names the key in
//! lists and logs and is the owner of the key's jobs. The secret is 256 random bits.
//! Only the SHA-256 of the whole key is stored; a presented key is hashed and compared in
//! constant time.

use chrono::{DateTime, Utc};

pub use crate::store::ApiKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "bgk_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

/// A freshly generated key: `secret` is shown to the user once and then forgotten.
pub struct NewKey {
    pub record: ApiKey,
    pub secret: String,
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes
}

pub fn generate(name: &str, tier: &str, admin: bool, now: DateTime<Utc>) -> NewKey {
    let id = hex::encode(random_bytes::<{ ID_HEX / 2 }>());
    let secret = hex::encode(random_bytes::<{ SECRET_HEX / 2 }>());
    let key = format!("{PREFIX}{id}_{secret}");
    NewKey {
        record: ApiKey {
            id,
            hash: hash(&key),
            name: name.to_owned(),
            tier: tier.to_owned(),
            admin,
            created_at: now,
            revoked_at: None,
        },
        secret: key,
    }
}

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The public id of a well-formed key, `None` for anything else.
pub fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_digits =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_digits(id, ID_HEX) && hex_digits(secret, SECRET_HEX)).then_some(id)
}

/// Does `presented` match the stored record (in constant time)?
pub fn matches(record: &ApiKey, presented: &str) -> bool {
    hash(presented)
        .as_bytes()
        .ct_eq(record.hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_only_themselves() {
        let first = generate("ci", "free", false, Utc::now());
        let second = generate("ci", "free", false, Utc::now());
        assert_ne!(first.secret, second.secret);
        assert_eq!(parse_id(&first.secret), Some(first.record.id.as_str()));
        assert!(matches(&first.record, &first.secret));
        assert!(!matches(&first.record, &second.secret));
        assert!(!first.record.hash.contains(&first.secret[20..]));
        // 256 random bits of secret.
        assert_eq!(first.secret.len(), PREFIX.len() + ID_HEX + 1 + SECRET_HEX);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for bad in [
            "",
            "bgk_",
            "bgk_0123456789ab",
            "bgk_0123456789ab_short",
            "xyz_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000",
            "bgk_0123456789aZ_000000000000000000000000000000000000000000000000000000000000000g",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
