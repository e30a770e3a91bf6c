//! Configuration from the environment only: `<SERVICE>__<SECTION>__<KEY>`, read once at
//! start, failing fast with the variable's name. Values are never echoed back, since some
//! of them (database URLs) carry secrets.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key} is not set; {hint}")]
    Missing { key: String, hint: &'static str },
    #[error("{key} is invalid: {reason}")]
    Invalid { key: String, reason: String },
}

/// Reads variables that share one prefix, e.g. `ORDERS`.
#[derive(Debug, Clone)]
pub struct Env {
    prefix: String,
    /// Read instead of the process's environment (`from_vars`).
    vars: Option<BTreeMap<String, String>>,
}

impl Env {
    pub fn new(prefix: &str) -> Self {
        Env {
            prefix: prefix.to_string(),
            vars: None,
        }
    }

    /// Reads `vars` (full names) instead of the process's environment: for tests, which
    /// cannot set variables while other threads may read them.
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        prefix: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            prefix: prefix.to_string(),
            vars: Some(
                vars.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The full variable name for a key such as `DATABASE__URL`.
    pub fn key(&self, name: &str) -> String {
        format!("{}__{}", self.prefix, name)
    }

    fn get(&self, name: &str) -> Option<String> {
        let key = self.key(name);
        match &self.vars {
            Some(vars) => vars.get(&key).cloned(),
            None => std::env::var(key).ok(),
        }
        .filter(|v| !v.trim().is_empty())
    }

    pub fn required(&self, name: &str, hint: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| ConfigError::Missing {
            key: self.key(name),
            hint,
        })
    }

    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    key: self.key(name),
                    reason: e.to_string(),
                }),
        }
    }
}
