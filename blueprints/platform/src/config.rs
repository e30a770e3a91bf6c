//! Configuration from the environment only: `<SERVICE>__<SECTION>__<KEY>`, read once at
//! start, failing fast with the variable's name. Values are never echoed back, since some
//! of them (database URLs) carry secrets.

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
}

impl Env {
    pub fn new(prefix: &str) -> Self {
        Env {
            prefix: prefix.to_string(),
        }
    }

    /// The full variable name for a key such as `DATABASE__URL`.
    pub fn key(&self, name: &str) -> String {
        format!("{}__{}", self.prefix, name)
    }

    fn get(&self, name: &str) -> Option<String> {
        std::env::var(self.key(name))
            .ok()
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
