//! API keys for machine clients. A key looks like `<system>_<prefix>_<secret>`; the gateway
//! keeps only its lookup prefix and the SHA-256 of the whole key, so neither its config nor
//! its memory nor a log holds a usable key. `gateway api-key` makes one and prints the key
//! once, with the record to add to `GATEWAY__AUTH__API_KEYS`.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the gateway stores of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Who the key belongs to; the rate limit and the logs use it.
    pub name: String,
    /// The key's public lookup prefix (8 hex characters).
    pub prefix: String,
    /// SHA-256 of the whole key, lower-case hex.
    pub sha256: String,
    pub scopes: Vec<String>,
}

pub const PREFIX_LEN: usize = 8;

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes a new key: 8 hex characters of prefix and 64 of secret (244 random bits).
pub fn generate(system: &str, name: &str, scopes: Vec<String>) -> (String, ApiKeyRecord) {
    let prefix: String = uuid::Uuid::new_v4().simple().to_string()[..PREFIX_LEN].to_string();
    let secret = crate::service_auth::random_secret();
    let key = format!("{system}_{prefix}_{secret}");
    let record = ApiKeyRecord {
        name: name.to_string(),
        prefix,
        sha256: sha256_hex(&key),
        scopes,
    };
    (key, record)
}

/// The configured keys, indexed by prefix.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_prefix: HashMap<String, Vec<ApiKeyRecord>>,
}

impl ApiKeys {
    /// Parses `GATEWAY__AUTH__API_KEYS`: a JSON array of records.
    pub fn from_json(json: &str) -> Result<ApiKeys, String> {
        let records: Vec<ApiKeyRecord> = serde_json::from_str(json).map_err(|e| {
            format!("must be a JSON array of records as `gateway api-key` prints them: {e}")
        })?;
        let mut keys = ApiKeys::default();
        for record in records {
            let valid_hash =
                record.sha256.len() == 64 && record.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if record.prefix.len() != PREFIX_LEN || !valid_hash {
                return Err(format!(
                    "the record of `{}` needs an {PREFIX_LEN}-character prefix and a 64-character sha256",
                    record.name
                ));
            }
            keys.by_prefix
                .entry(record.prefix.clone())
                .or_default()
                .push(record);
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// The record of a presented key, if it is one of ours.
    pub fn verify(&self, presented: &str) -> Option<&ApiKeyRecord> {
        let mut parts = presented.rsplitn(3, '_');
        let (_secret, prefix) = (parts.next()?, parts.next()?);
        let candidates = self.by_prefix.get(prefix)?;
        let hash = sha256_hex(presented);
        candidates
            .iter()
            .find(|record| constant_time_eq(record.sha256.as_bytes(), hash.as_bytes()))
    }
}

impl ApiKeyRecord {
    pub fn scopes(&self) -> BTreeSet<String> {
        self.scopes.iter().cloned().collect()
    }
}

/// Compares without an early exit, so timing does not reveal how much of a hash matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_verifies_and_its_record_holds_no_secret() {
        let (key, record) = generate("shop", "ci", vec!["orders:read".into()]);
        let json = serde_json::to_string(&vec![record.clone()]).unwrap();
        assert!(!json.contains(&key), "the record must not contain the key");
        let secret = key.rsplit('_').next().unwrap();
        assert!(!json.contains(secret));
        let keys = ApiKeys::from_json(&json).unwrap();
        assert_eq!(keys.verify(&key), Some(&record));
    }

    #[test]
    fn a_wrong_or_malformed_key_is_refused() {
        let (key, record) = generate("shop", "ci", vec![]);
        let keys = ApiKeys::from_json(&serde_json::to_string(&vec![record]).unwrap()).unwrap();
        let mut tampered = key.clone();
        tampered.pop();
        tampered.push(if key.ends_with('0') { '1' } else { '0' });
        assert_eq!(keys.verify(&tampered), None);
        assert_eq!(keys.verify("nonsense"), None);
        assert_eq!(keys.verify(""), None);
    }

    #[test]
    fn bad_records_are_refused_with_the_reason() {
        let err = ApiKeys::from_json(r#"[{"name":"x","prefix":"ab","sha256":"00","scopes":[]}]"#)
            .unwrap_err();
        assert!(err.contains("prefix"), "{err}");
        assert!(
            ApiKeys::from_json("not json")
                .unwrap_err()
                .contains("JSON array")
        );
    }
}
