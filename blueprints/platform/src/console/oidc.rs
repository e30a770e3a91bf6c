//! Signing in with the system's identity provider (OpenID Connect): the authorization code
//! flow with PKCE (RFC 7636) against the gateway's issuer. An operator signed in this way
//! acts with their own access token, which the console keeps on the server
//! (`session::Operators`) and sends to the gateway for admin actions; the gateway checks
//! it as it checks every caller's. The console holds no key for the services beyond its
//! read-only links.
//!
//! The provider's endpoints come from its discovery document, fetched at the first sign-in
//! (and again after a failed one). Each sign-in's `state` names the PKCE verifier kept
//! here for [`PENDING_TTL`] (at most [`MAX_PENDING`] at once) and is also held in a cookie
//! of the browser that started it, so a code cannot be injected into another browser.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, Env};

/// How long a started sign-in may take at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Sign-ins started and not finished, at most: the oldest is dropped beyond.
pub const MAX_PENDING: usize = 1024;
/// The cookie that ties a sign-in's `state` to the browser that started it.
pub const STATE_COOKIE: &str = "console_oidc_state";
/// Where the provider sends the browser back.
pub const CALLBACK_PATH: &str = "/login/callback";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer (its discovery document is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// A confidential client's secret (HTTP Basic at the token endpoint); none: a public
    /// client, which PKCE alone protects.
    pub client_secret: Option<String>,
    /// What the console asks for: `openid` and each context's admin scope by default.
    pub scopes: String,
    /// An RFC 8707 resource indicator (the API's), for providers that need one to issue an
    /// access token for the gateway.
    pub resource: Option<String>,
}

impl OidcConfig {
    /// `CONSOLE__OIDC__ISSUER` (unset or empty: no OIDC sign-in, the one-time link only),
    /// `__CLIENT_ID`, `__CLIENT_SECRET`, `__SCOPES` and `__RESOURCE`. `admin_scopes` are the
    /// default scopes after `openid`.
    pub fn from_env(env: &Env, admin_scopes: &[String]) -> Result<Option<OidcConfig>, ConfigError> {
        let issuer: String = env.parse_or("OIDC__ISSUER", String::new())?;
        if issuer.is_empty() {
            return Ok(None);
        }
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(ConfigError::Invalid {
                key: env.key("OIDC__ISSUER"),
                reason: format!(
                    "'{issuer}' is not an http(s) URL (the gateway's GATEWAY__AUTH__ISSUER)"
                ),
            });
        }
        let client_id = env.required(
            "OIDC__CLIENT_ID",
            "the console's client id at the identity provider (a client allowed the authorization code flow with PKCE, whose redirect URI is <CONSOLE__PUBLIC_URL>/login/callback)",
        )?;
        let optional = |key: &str| -> Result<Option<String>, ConfigError> {
            let value: String = env.parse_or(key, String::new())?;
            Ok((!value.is_empty()).then_some(value))
        };
        let default_scopes = std::iter::once("openid".to_string())
            .chain(admin_scopes.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Some(OidcConfig {
            issuer: issuer.trim_end_matches('/').to_string(),
            client_id,
            client_secret: optional("OIDC__CLIENT_SECRET")?,
            scopes: optional("OIDC__SCOPES")?.unwrap_or(default_scopes),
            resource: optional("OIDC__RESOURCE")?,
        }))
    }
}

/// An operator signed in with the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub subject: String,
    pub scopes: BTreeSet<String>,
    /// Their access token, for the gateway; never sent to the browser.
    pub access_token: String,
    /// When the token expires (seconds since the epoch): the session ends with it.
    pub expires_at: u64,
}

impl Operator {
    pub fn may(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider's discovery document could not be read: {0}")]
    Discovery(String),
    #[error("this sign-in is unknown or took longer than {} minutes; start again", PENDING_TTL.as_secs() / 60)]
    UnknownState,
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the identity provider's token endpoint failed: {0}")]
    Token(String),
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

struct Pending {
    verifier: String,
    started: Instant,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    /// The scopes granted (RFC 6749 5.1), when they differ from those asked for.
    #[serde(default)]
    scope: Option<String>,
}

/// The access token's claims the console reads. Not verified here: the token came straight
/// from the provider's token endpoint in answer to this console (OIDC Core 3.1.3.7 lets
/// the transport stand in for a signature there), and the gateway verifies it on every call
/// it is used for; the console uses the claims only to name the operator and to show the
/// actions their scopes allow.
#[derive(serde::Deserialize)]
struct AccessClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<serde_json::Value>,
}

pub struct Oidc {
    config: OidcConfig,
    redirect_uri: String,
    http: reqwest::Client,
    endpoints: tokio::sync::Mutex<Option<Endpoints>>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// 244 random bits, URL-safe (a PKCE verifier may be 43 to 128 such characters).
fn random() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The S256 code challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn scopes_of(granted: Option<&str>, claims: &AccessClaims) -> BTreeSet<String> {
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut scopes = BTreeSet::new();
    if let Some(granted) = granted {
        scopes.extend(words(granted));
    }
    if let Some(scope) = &claims.scope {
        scopes.extend(words(scope));
    }
    match &claims.scp {
        Some(serde_json::Value::String(s)) => scopes.extend(words(s)),
        Some(serde_json::Value::Array(items)) => {
            scopes.extend(items.iter().filter_map(|v| v.as_str().map(str::to_string)));
        }
        _ => {}
    }
    scopes
}

impl Oidc {
    /// `public_url` is the console's own (the redirect URI is under it).
    pub fn new(config: OidcConfig, public_url: &str) -> Oidc {
        Oidc {
            redirect_uri: format!("{}{CALLBACK_PATH}", public_url.trim_end_matches('/')),
            config,
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("a client with a timeout builds"),
            endpoints: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    async fn endpoints(&self) -> Result<Endpoints, OidcError> {
        let mut known = self.endpoints.lock().await;
        if let Some(endpoints) = known.as_ref() {
            return Ok(endpoints.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let endpoints: Endpoints = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e: reqwest::Error| OidcError::Discovery(format!("{url}: {e}")))?;
        *known = Some(endpoints.clone());
        Ok(endpoints)
    }

    /// Starts a sign-in: the provider's authorization URL to send the browser to, and the
    /// `state` to keep in the browser's cookie.
    pub async fn start(&self) -> Result<(String, String), OidcError> {
        let endpoints = self.endpoints().await?;
        let mut url = reqwest::Url::parse(&endpoints.authorization_endpoint).map_err(|e| {
            OidcError::Discovery(format!(
                "its authorization_endpoint '{}' is not a URL: {e}",
                endpoints.authorization_endpoint
            ))
        })?;
        let state = random();
        let verifier = random();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", &self.config.scopes)
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
            if let Some(resource) = &self.config.resource {
                query.append_pair("resource", resource);
            }
        }
        {
            let mut pending = self.pending.lock().expect("pending sign-ins lock");
            pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
            if pending.len() >= MAX_PENDING
                && let Some(oldest) = pending
                    .iter()
                    .min_by_key(|(_, p)| p.started)
                    .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
            pending.insert(
                state.clone(),
                Pending {
                    verifier,
                    started: Instant::now(),
                },
            );
        }
        Ok((url.into(), state))
    }

    /// Finishes a sign-in: exchanges the code (with the verifier `state` names, once) for
    /// the operator's access token.
    pub async fn finish(&self, state: &str, code: &str, now: u64) -> Result<Operator, OidcError> {
        let pending = self
            .pending
            .lock()
            .expect("pending sign-ins lock")
            .remove(state)
            .filter(|p| p.started.elapsed() < PENDING_TTL)
            .ok_or(OidcError::UnknownState)?;
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", &pending.verifier),
        ];
        let mut request = self.http.post(&endpoints.token_endpoint);
        match &self.config.client_secret {
            Some(secret) => {
                request = request.basic_auth(
                    form_encode(&self.config.client_id),
                    Some(form_encode(secret)),
                );
            }
            None => form.push(("client_id", &self.config.client_id)),
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Token(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(OidcError::Refused(format!(
                "{status}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        let token: TokenResponse = response
            .json()
            .await
            .map_err(|e| OidcError::Token(format!("an answer without an access token: {e}")))?;
        let claims: AccessClaims = jsonwebtoken::dangerous::insecure_decode_claims(
            &token.access_token,
        )
        .map_err(|e| {
            OidcError::Token(format!(
                "the access token is not a JWT ({e}); the gateway accepts only JWT access tokens, so ask the provider for one (CONSOLE__OIDC__RESOURCE may name the API)"
            ))
        })?;
        let expires_at = claims
            .exp
            .or(token.expires_in.map(|s| now + s))
            .unwrap_or(now);
        if expires_at <= now {
            return Err(OidcError::Token("the access token has expired".into()));
        }
        Ok(Operator {
            subject: claims.sub.clone(),
            scopes: scopes_of(token.scope.as_deref(), &claims),
            access_token: token.access_token,
            expires_at,
        })
    }
}

/// One value form-encoded, as RFC 6749 2.3.1 asks of a client id and secret in HTTP Basic
/// (reqwest's `basic_auth` sends them as they are).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636s_s256() {
        // BASE64URL(SHA256(verifier)) without padding, as Python's hashlib and base64 make it.
        // (A test vector, not a secret: the pragmas tell the secret scanners so.)
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gZWFOEjXk"; // pragma: allowlist secret
        let expected = "f7Gnl8yE2HqPO3jWgUcBsbk1zQozsHeU3CvdI3GaI_M"; // pragma: allowlist secret
        assert_eq!(challenge(verifier), expected);
    }

    #[test]
    fn scopes_come_from_the_grant_and_either_claim_form() {
        let claims = AccessClaims {
            sub: "ann".into(),
            exp: None,
            scope: Some("orders:read orders:admin".into()),
            scp: Some(serde_json::json!(["payments:admin"])),
        };
        let scopes = scopes_of(Some("openid"), &claims);
        assert_eq!(
            scopes.into_iter().collect::<Vec<_>>(),
            ["openid", "orders:admin", "orders:read", "payments:admin"]
        );
        let spaced = AccessClaims {
            scp: Some(serde_json::json!("a b")),
            scope: None,
            ..claims
        };
        assert_eq!(scopes_of(None, &spaced).len(), 2);
    }

    #[test]
    fn values_are_form_encoded() {
        assert_eq!(form_encode("openid orders:admin"), "openid+orders%3Aadmin");
        assert_eq!(form_encode("http://x/y?z"), "http%3A%2F%2Fx%2Fy%3Fz");
    }

    #[tokio::test]
    async fn a_state_is_spent_once_and_an_unknown_one_is_refused() {
        let oidc = Oidc::new(
            OidcConfig {
                issuer: "http://127.0.0.1:9".into(),
                client_id: "console".into(),
                client_secret: None,
                scopes: "openid".into(),
                resource: None,
            },
            "http://127.0.0.1:8090/",
        );
        assert_eq!(oidc.redirect_uri, "http://127.0.0.1:8090/login/callback");
        // Nothing listens on the discard port: discovery fails, and says where.
        let e = oidc.start().await.unwrap_err();
        assert!(
            e.to_string()
                .contains("http://127.0.0.1:9/.well-known/openid-configuration"),
            "{e}"
        );
        assert!(matches!(
            oidc.finish("never-started", "code", 0).await,
            Err(OidcError::UnknownState)
        ));
    }
}
