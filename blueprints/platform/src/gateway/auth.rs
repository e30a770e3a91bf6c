//! Who is calling: a JWT access token (`Authorization: Bearer`) validated against the OIDC
//! issuer's JWKS, or an API key (`X-Api-Key`). Tokens must carry a valid signature, `exp`,
//! the configured `iss` and `aud` (a string, or an array that contains it), and no `nbf`
//! in the future; scopes come from `scope` (space-separated) or `scp` (an array, or a
//! space-separated string), as real identity providers issue them.
//!
//! The JWKS is fetched at start, cached, and fetched again after its TTL
//! (`GATEWAY__AUTH__JWKS_TTL_SECS`, [`JWKS_TTL`] by default; so a key
//! the issuer removed stops being trusted) or when a token names a key id the cache does
//! not know (the issuer rotated its keys), at most once per [`JWKS_MIN_REFRESH`] and one
//! fetch at a time. A fetch never holds up a token whose key is known: past the TTL the set
//! is fetched in the background while the keys in hand go on verifying, and only a token
//! with an unknown key id waits for the fetch it asked for. Only asymmetric algorithms are
//! accepted from a JWKS; a key without
//! `alg` is accepted where its type and curve fix the algorithm (or, for RSA, its family).
//!
//! A token that verified is remembered (by its exact text, [`VERIFIED_CAPACITY`] tokens at
//! most) until its `exp`, so a client's next request skips the signature check and the
//! claims' JSON; an entry counts only while the JWKS is the one it verified under, so a key
//! the issuer removed stops being trusted at the first fetch that finds it gone.
//!
//! Dev mode adds a local issuer: tokens signed with HS256 under `GATEWAY__AUTH__DEV_SECRET`,
//! key id `dev`, which `gateway dev-token` prints. It is off unless configured.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::service_auth::now_secs;
use axum::http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::expiring::ExpiringMap;
use crate::gateway::api_keys::ApiKeys;
use crate::gateway::problem::Problem;

pub const API_KEY_HEADER: &str = "x-api-key";
pub const DEV_KEY_ID: &str = "dev";
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a fetched JWKS is trusted before it is fetched again, unless configured.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const LEEWAY_SECS: u64 = 30;
/// How many verified tokens are remembered, and the longest one that is (a bearer token is
/// a few hundred bytes to a few kilobytes): at most 40 MB between them.
pub const VERIFIED_CAPACITY: usize = 10_000;
const LONGEST_REMEMBERED: usize = 4096;
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: BTreeSet<String>,
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Token,
    ApiKey,
}

impl Principal {
    /// Who this is, with the kind of credential: what rate limits are counted under, and
    /// the end user the services are told of (the link token's `act`), so that an API key
    /// named `alice` and a token whose subject is `alice` are two callers to them (their
    /// idempotency keys, their log lines).
    pub fn identity(&self) -> String {
        match self.via {
            Via::Token => format!("token:{}", self.subject),
            Via::ApiKey => format!("api-key:{}", self.subject),
        }
    }

    /// 403 unless the caller holds `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this route needs the `{scope}` scope, which the credential does not grant"
            )))
        }
    }
}

/// A claim that identity providers send as one string or as an array of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// Every value; a single string is split on whitespace, as `scope` and `scp` are.
    fn words(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => s.split_whitespace().collect(),
            OneOrMany::Many(v) => v.iter().flat_map(|s| s.split_whitespace()).collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    /// Checked by the validation (string or array); kept here for `dev_token`.
    pub aud: OneOrMany,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<OneOrMany>,
}

impl Claims {
    fn scopes(&self) -> BTreeSet<String> {
        let spaced = self.scope.iter().flat_map(|s| s.split_whitespace());
        let listed = self.scp.iter().flat_map(OneOrMany::words);
        spaced.chain(listed).map(str::to_string).collect()
    }
}

#[derive(Clone)]
pub struct DevIssuer {
    pub issuer: String,
    pub secret: Arc<[u8]>,
}

#[derive(Clone)]
pub struct OidcIssuer {
    pub issuer: String,
    pub jwks_url: String,
    /// How long a fetched JWKS is trusted (at least `JWKS_MIN_REFRESH` in effect).
    pub jwks_ttl: Duration,
}

#[derive(Clone)]
pub struct AuthConfig {
    pub audience: String,
    pub oidc: Option<OidcIssuer>,
    pub dev: Option<DevIssuer>,
}

struct Jwks {
    /// Each key with the algorithms it may verify. Locked for a lookup or a swap only.
    keys: RwLock<HashMap<String, (DecodingKey, Vec<Algorithm>)>>,
    /// When the last fetch started. Locked for a read or a write only.
    last_fetch: Mutex<Option<Instant>>,
    /// Held for a whole fetch: one at a time.
    fetching: tokio::sync::Mutex<()>,
    /// The set the last fetch returned, and how many times it has changed: a verified
    /// token is remembered with the generation it verified under.
    fetched: Mutex<Option<JwkSet>>,
    generation: AtomicU64,
    http: reqwest::Client,
    issuer: OidcIssuer,
}

pub struct Authenticator {
    audience: String,
    dev: Option<(DevIssuer, DecodingKey)>,
    jwks: Option<Arc<Jwks>>,
    api_keys: ApiKeys,
    /// Tokens that verified, with what they proved and the JWKS generation they did under.
    verified: ExpiringMap<String, (Principal, u64)>,
}

impl Authenticator {
    pub fn new(config: AuthConfig, api_keys: ApiKeys) -> Authenticator {
        let jwks = config.oidc.map(|issuer| Arc::new(Jwks::new(issuer)));
        if config.dev.is_some() {
            tracing::warn!(
                "DEV MODE (GATEWAY__AUTH__DEV_MODE=true): tokens from the local dev issuer, which anyone holding its secret can mint, are accepted; never run it so in production"
            );
        }
        Authenticator {
            audience: config.audience,
            dev: config.dev.map(|dev| {
                let key = DecodingKey::from_secret(&dev.secret);
                (dev, key)
            }),
            jwks,
            api_keys,
            verified: ExpiringMap::new(VERIFIED_CAPACITY),
        }
    }

    /// Fetches the JWKS once at start; a failure is logged, not fatal, since the next token
    /// with an unknown key id fetches again.
    pub async fn warm_up(&self) {
        if let Some(jwks) = &self.jwks
            && let Err(e) = jwks.refresh(true).await
        {
            tracing::warn!(error = %e, url = %jwks.issuer.jwks_url, "cannot fetch the issuer's JWKS yet");
        }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Problem::unauthorized("the Authorization header must be `Bearer <token>`")
                })?;
            return self.verify_token(token).await;
        }
        if let Some(value) = headers.get(API_KEY_HEADER) {
            let presented = value.to_str().unwrap_or_default();
            let record = self
                .api_keys
                .verify(presented)
                .ok_or_else(|| Problem::unauthorized("the API key is not valid"))?;
            return Ok(Principal {
                subject: record.name.clone(),
                scopes: record.scopes(),
                via: Via::ApiKey,
            });
        }
        Err(Problem::unauthorized(
            "send an access token (Authorization: Bearer <token>) or an API key (X-Api-Key)",
        ))
    }

    pub async fn verify_token(&self, token: &str) -> Result<Principal, Problem> {
        let now = now_secs();
        let generation = match &self.jwks {
            Some(jwks) => {
                // Even when every token is remembered, the set is fetched again past its
                // TTL: that is how a removed key stops being trusted.
                jwks.refresh_if_stale();
                jwks.generation.load(Ordering::Acquire)
            }
            None => 0,
        };
        if let Some((principal, seen)) = self.verified.get(token, now)
            && seen == generation
        {
            return Ok(principal);
        }
        let (principal, exp) = self.verify_signed(token).await?;
        if token.len() <= LONGEST_REMEMBERED {
            self.verified
                .insert(token.to_string(), (principal.clone(), generation), exp, now);
        }
        Ok(principal)
    }

    /// Checks the token's signature and claims: who it names, and until when.
    async fn verify_signed(&self, token: &str) -> Result<(Principal, u64), Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the access token is not a well-formed JWT"))?;
        let kid = header.kid.clone().unwrap_or_default();
        let (key, algorithm, issuer) = match (&self.dev, &self.jwks) {
            (Some((dev, key)), _) if kid == DEV_KEY_ID => {
                (key.clone(), Algorithm::HS256, dev.issuer.clone())
            }
            (_, Some(jwks)) => {
                let (key, algorithm) = jwks.key(&kid, header.alg).await?;
                (key, algorithm, jwks.issuer.issuer.clone())
            }
            _ => {
                return Err(Problem::unauthorized(
                    "the access token's signing key is not trusted here",
                ));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the access token has expired",
                    ErrorKind::ImmatureSignature => "the access token is not valid yet (nbf)",
                    ErrorKind::InvalidAudience => {
                        "the access token is not meant for this API (audience)"
                    }
                    ErrorKind::InvalidIssuer => {
                        "the access token comes from an issuer this API does not trust"
                    }
                    ErrorKind::InvalidSignature => "the access token's signature is not valid",
                    _ => "the access token is not valid",
                };
                Problem::unauthorized(why)
            })?
            .claims;
        let principal = Principal {
            scopes: claims.scopes(),
            subject: claims.sub,
            via: Via::Token,
        };
        Ok((principal, claims.exp))
    }
}

impl Jwks {
    fn new(issuer: OidcIssuer) -> Jwks {
        Jwks {
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetched: Mutex::new(None),
            generation: AtomicU64::new(0),
            http: reqwest::Client::builder()
                .timeout(JWKS_FETCH_TIMEOUT)
                .build()
                .expect("an HTTP client with default TLS roots"),
            issuer,
        }
    }

    fn known(&self, kid: &str) -> Option<(DecodingKey, Vec<Algorithm>)> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    async fn key(
        self: &Arc<Self>,
        kid: &str,
        alg: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), Problem> {
        if !ASYMMETRIC.contains(&alg) {
            return Err(Problem::unauthorized(
                "the access token must be signed with an asymmetric algorithm",
            ));
        }
        let (key, algorithms) = match self.known(kid) {
            Some(found) => found,
            None => {
                // An unknown key id: the issuer may have rotated its keys. This token waits
                // for a fetch (at most one per JWKS_MIN_REFRESH, one at a time); no other does.
                if let Err(e) = self.refresh(false).await {
                    tracing::warn!(error = %e, "cannot refresh the issuer's JWKS");
                }
                self.known(kid).ok_or_else(|| {
                    Problem::unauthorized(
                        "the access token's signing key is not in the issuer's JWKS",
                    )
                })?
            }
        };
        if !algorithms.contains(&alg) {
            return Err(Problem::unauthorized(
                "the access token's algorithm does not match its signing key",
            ));
        }
        Ok((key, alg))
    }

    /// Past its TTL, the set is fetched again (a key the issuer removed goes), in the
    /// background: the keys in hand serve meanwhile. Asked once per token presented
    /// ([`Authenticator::verify_token`]), remembered or not.
    fn refresh_if_stale(self: &Arc<Self>) {
        let last = *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        if needs_refresh(last, Instant::now(), self.issuer.jwks_ttl) {
            self.refresh_in_background();
        }
    }

    /// Starts a fetch in the background unless one is running.
    fn refresh_in_background(self: &Arc<Self>) {
        if self.fetching.try_lock().is_err() {
            return;
        }
        let jwks = self.clone();
        tokio::spawn(async move {
            if let Err(e) = jwks.refresh(false).await {
                tracing::warn!(error = %e, "cannot refresh the issuer's JWKS");
            }
        });
    }

    async fn refresh(&self, force: bool) -> Result<(), String> {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.is_some_and(|at| at.elapsed() < JWKS_MIN_REFRESH) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let set: JwkSet = self
            .http
            .get(&self.issuer.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| format!("the JWKS does not parse: {e}"))?;
        self.install(set);
        Ok(())
    }

    /// Trusts the keys of `set` from now on, and only those; a set unlike the last one
    /// starts a new generation, so that no token verified under the old one counts.
    fn install(&self, set: JwkSet) {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            let algorithms = algorithms_of(jwk);
            if algorithms.is_empty() {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), (key, algorithms));
            }
        }
        tracing::info!(keys = keys.len(), url = %self.issuer.jwks_url, "fetched the issuer's JWKS");
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        if fetched.as_ref() != Some(&set) {
            // After the keys: a token checked against the new keys may then be remembered
            // under the old generation, and is merely verified again.
            self.generation.fetch_add(1, Ordering::AcqRel);
            *fetched = Some(set);
        }
    }
}

/// Whether a JWKS fetched at `last` (never, if `None`) is to be fetched again at `now`.
fn needs_refresh(last: Option<Instant>, now: Instant, ttl: Duration) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= ttl)
}

/// The asymmetric algorithms a JWK may verify: its `alg` when it has one; without, what
/// its key type and curve fix (an EC P-256 key is ES256), or for RSA the RSA family (the
/// token's own header then picks one of them).
fn algorithms_of(jwk: &jsonwebtoken::jwk::Jwk) -> Vec<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    if let Some(alg) = jwk.common.key_algorithm {
        return alg
            .to_string()
            .parse::<Algorithm>()
            .ok()
            .filter(|a| ASYMMETRIC.contains(a))
            .into_iter()
            .collect();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => Vec::new(),
    }
}

/// A token from the dev issuer, as `gateway dev-token` prints it.
pub fn dev_token(
    dev: &DevIssuer,
    audience: &str,
    subject: &str,
    scopes: &[String],
    ttl: Duration,
) -> String {
    let now = now_secs();
    let claims = Claims {
        sub: subject.to_string(),
        iss: dev.issuer.clone(),
        aud: OneOrMany::One(audience.to_string()),
        exp: now + ttl.as_secs(),
        iat: now,
        scope: Some(scopes.join(" ")),
        scp: None,
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(DEV_KEY_ID.to_string());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&dev.secret))
        .expect("HS256 signing with a byte key cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(secret: &str) -> DevIssuer {
        DevIssuer {
            issuer: "shop-dev".into(),
            secret: Arc::from(secret.repeat(32).as_bytes()),
        }
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(
            AuthConfig {
                audience: "shop-api".into(),
                oidc: None,
                dev: Some(dev("a")),
            },
            ApiKeys::default(),
        )
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn a_dev_token_carries_subject_and_scopes() {
        let token = dev_token(
            &dev("a"),
            "shop-api",
            "alice",
            &["orders:read".into()],
            Duration::from_secs(60),
        );
        let principal = authenticator().authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(principal.subject, "alice");
        assert!(principal.require("orders:read").is_ok());
        assert_eq!(principal.require("orders:write").unwrap_err().status, 403);
    }

    #[tokio::test]
    async fn expired_foreign_or_forged_tokens_are_refused() {
        let auth = authenticator();
        let scopes = ["orders:read".to_string()];
        // Expired an hour ago: well past the leeway.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(DEV_KEY_ID.into());
        let stale = Claims {
            sub: "alice".into(),
            iss: "shop-dev".into(),
            aud: OneOrMany::One("shop-api".into()),
            exp: now_secs() - 3600,
            iat: now_secs() - 7200,
            scope: Some("orders:read".into()),
            scp: None,
        };
        let expired =
            jsonwebtoken::encode(&header, &stale, &EncodingKey::from_secret(&dev("a").secret))
                .unwrap();
        let cases = [
            (expired, "expired"),
            (
                dev_token(
                    &dev("a"),
                    "other-api",
                    "alice",
                    &scopes,
                    Duration::from_secs(60),
                ),
                "audience",
            ),
            (
                dev_token(
                    &dev("b"),
                    "shop-api",
                    "alice",
                    &scopes,
                    Duration::from_secs(60),
                ),
                "signature",
            ),
            ("not.a.jwt".to_string(), "well-formed"),
        ];
        for (token, why) in cases {
            let refused = auth.authenticate(&bearer(&token)).await.unwrap_err();
            assert_eq!(refused.status, 401, "{why}");
            assert!(refused.detail.contains(why), "{why}: {}", refused.detail);
        }
        let none = auth.authenticate(&HeaderMap::new()).await.unwrap_err();
        assert_eq!(none.status, 401);
    }

    #[tokio::test]
    async fn dev_tokens_are_refused_when_dev_mode_is_off() {
        let auth = Authenticator::new(
            AuthConfig {
                audience: "shop-api".into(),
                oidc: None,
                dev: None,
            },
            ApiKeys::default(),
        );
        let token = dev_token(&dev("a"), "shop-api", "alice", &[], Duration::from_secs(60));
        assert_eq!(
            auth.authenticate(&bearer(&token)).await.unwrap_err().status,
            401
        );
    }

    /// A dev-issuer token with these claims on top of valid defaults.
    fn token_with(extra: serde_json::Value) -> String {
        let now = now_secs();
        let mut claims = serde_json::json!({
            "sub": "alice", "iss": "shop-dev", "aud": "shop-api", "exp": now + 60, "iat": now,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(DEV_KEY_ID.into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&dev("a").secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn tokens_as_identity_providers_issue_them_are_accepted() {
        let auth = authenticator();
        let cases = [
            (
                serde_json::json!({"aud": ["other-api", "shop-api"], "scope": "orders:read orders:write"}),
                vec!["orders:read", "orders:write"],
            ),
            (
                serde_json::json!({"scp": "orders:read orders:write"}),
                vec!["orders:read", "orders:write"],
            ),
            (
                serde_json::json!({"scp": ["orders:read"], "scope": "orders:write"}),
                vec!["orders:read", "orders:write"],
            ),
            (serde_json::json!({"nbf": now_secs() - 10}), vec![]),
        ];
        for (claims, scopes) in cases {
            let principal = auth
                .authenticate(&bearer(&token_with(claims.clone())))
                .await
                .unwrap_or_else(|p| panic!("{claims}: {}", p.detail));
            let want: BTreeSet<String> = scopes.into_iter().map(str::to_string).collect();
            assert_eq!(principal.scopes, want, "{claims}");
        }
        let other = token_with(serde_json::json!({"aud": ["other-api", "third-api"]}));
        assert!(
            auth.authenticate(&bearer(&other))
                .await
                .unwrap_err()
                .detail
                .contains("audience")
        );
        let early = token_with(serde_json::json!({"nbf": now_secs() + 3600}));
        assert!(
            auth.authenticate(&bearer(&early))
                .await
                .unwrap_err()
                .detail
                .contains("nbf")
        );
    }

    #[test]
    fn an_api_key_and_a_token_user_of_one_name_are_two_identities() {
        let principal = |via| Principal {
            subject: "alice".into(),
            scopes: BTreeSet::new(),
            via,
        };
        assert_eq!(principal(Via::Token).identity(), "token:alice");
        assert_eq!(principal(Via::ApiKey).identity(), "api-key:alice");
    }

    #[test]
    fn a_jwk_without_alg_is_used_where_its_type_and_curve_fix_the_algorithm() {
        let jwk = |json: serde_json::Value| {
            serde_json::from_value::<jsonwebtoken::jwk::Jwk>(json).unwrap()
        };
        // Only the key type, curve and alg matter here: the key material is a placeholder.
        let p256 = jwk(serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": "AA", "y": "AA"}));
        assert_eq!(algorithms_of(&p256), vec![Algorithm::ES256]);
        let ed = jwk(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "k2",
            "x": "AA"}),
        );
        assert_eq!(algorithms_of(&ed), vec![Algorithm::EdDSA]);
        let rsa = jwk(serde_json::json!({"kty": "RSA", "kid": "k3", "n": "AA", "e": "AQAB"}));
        assert_eq!(
            algorithms_of(&rsa).len(),
            6,
            "the RSA family; the token's header picks"
        );
        let fixed = jwk(
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k4", "alg": "ES256",
            "x": "AA", "y": "AA"}),
        );
        assert_eq!(algorithms_of(&fixed), vec![Algorithm::ES256]);
    }

    /// A JWKS that takes 4 s to fetch: tokens whose key is known are verified at once all
    /// along, while tokens with made-up key ids (each asking for a fetch) wait for it.
    #[tokio::test]
    async fn a_slow_jwks_fetch_holds_up_no_token_whose_key_is_known() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // Bounded: a few fetches at most (one at a time, and none within 10 s of another).
            for _ in 0..4 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    let body = r#"{"keys":[]}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        let jwks = Arc::new(Jwks::new(OidcIssuer {
            issuer: "https://issuer.example".into(),
            jwks_url: url,
            jwks_ttl: JWKS_TTL,
        }));
        // A key in hand, fetched 20 s ago: within its TTL, past the minimum refresh.
        jwks.keys.write().unwrap().insert(
            "known".into(),
            (
                DecodingKey::from_secret(b"placeholder"),
                vec![Algorithm::ES256],
            ),
        );
        *jwks.last_fetch.lock().unwrap() = Instant::now().checked_sub(Duration::from_secs(20));
        let unknown: Vec<_> = (0..5)
            .map(|i| {
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    jwks.key(&format!("made-up-{i}"), Algorithm::ES256)
                        .await
                        .map(drop)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let started = Instant::now();
            jwks.key("known", Algorithm::ES256)
                .await
                .expect("the known key serves");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The fetch takes 4 s; a lookup that waited for it would take seconds.
        assert!(
            slowest < Duration::from_secs(1),
            "a known key waited {slowest:?} for the fetch"
        );
        for lookup in unknown {
            let refused = lookup.await.unwrap().unwrap_err();
            assert_eq!(refused.status, 401);
        }
        server.abort();
    }

    /// RFC 8037's example Ed25519 key (appendix A.1): its seed, and its public half as a
    /// JWK's `x`.
    // The RFC's published test key, not a secret.
    const ED_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"; // pragma: allowlist secret
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"; // pragma: allowlist secret

    /// A token an identity provider would issue, signed with the RFC key under `kid`.
    fn issued(kid: &str, exp: u64) -> String {
        // PKCS#8 v1 of an Ed25519 seed: a fixed 16-byte prefix, then the 32 bytes.
        let hex = format!("302e020100300506032b657004220420{ED_SEED}");
        let der: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.example",
            "aud": "shop-api", "exp": exp, "scope": "orders:read"});
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).unwrap()
    }

    fn key_set(kids: &[&str]) -> JwkSet {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": ED_X}))
            .collect();
        serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
    }

    /// A verified token is remembered until its `exp` and no longer, and counts only under
    /// the key set it verified with: once a fetch finds its key gone, it is refused.
    #[tokio::test]
    async fn a_remembered_token_is_refused_once_the_jwks_drops_its_key() {
        let auth = Authenticator::new(
            AuthConfig {
                audience: "shop-api".into(),
                oidc: Some(OidcIssuer {
                    issuer: "https://issuer.example".into(),
                    // Never fetched: the test installs each set itself.
                    jwks_url: "http://127.0.0.1:9/jwks".into(),
                    jwks_ttl: JWKS_TTL,
                }),
                dev: None,
            },
            ApiKeys::default(),
        );
        let jwks = auth.jwks.clone().unwrap();
        *jwks.last_fetch.lock().unwrap() = Some(Instant::now());
        jwks.install(key_set(&["k1"]));
        let exp = now_secs() + 600;
        let token = issued("k1", exp);
        let principal = auth.verify_token(&token).await.unwrap();
        assert_eq!(principal.subject, "alice");
        let remembered = |at| auth.verified.get(&token, at).map(|(p, _)| p);
        assert_eq!(remembered(exp - 1), Some(principal.clone()));
        assert_eq!(remembered(exp), None, "not past the token's exp");

        // The same set fetched again changes nothing.
        jwks.install(key_set(&["k1"]));
        assert_eq!(auth.verify_token(&token).await.unwrap(), principal);
        // The issuer rotated k1 out: the remembered token no longer counts.
        jwks.install(key_set(&["k2"]));
        let refused = auth.verify_token(&token).await.unwrap_err();
        assert_eq!(refused.status, 401);
        assert!(
            refused.detail.contains("not in the issuer's JWKS"),
            "{}",
            refused.detail
        );
        // And the same key under its new id verifies tokens that name it.
        assert!(auth.verify_token(&issued("k2", exp)).await.is_ok());
    }

    /// Past the TTL a remembered token still starts the fetch (nothing else might: every
    /// request can be a hit), and once the fetch finds its key gone it is refused.
    #[tokio::test]
    async fn a_remembered_token_alone_has_the_jwks_fetched_again_past_its_ttl() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let rotated = serde_json::to_string(&key_set(&["k2"])).unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for _ in 0..4 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{rotated}",
                    rotated.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        let auth = Authenticator::new(
            AuthConfig {
                audience: "shop-api".into(),
                oidc: Some(OidcIssuer {
                    issuer: "https://issuer.example".into(),
                    jwks_url: url,
                    jwks_ttl: JWKS_TTL,
                }),
                dev: None,
            },
            ApiKeys::default(),
        );
        let jwks = auth.jwks.clone().unwrap();
        jwks.install(key_set(&["k1"]));
        *jwks.last_fetch.lock().unwrap() = Some(Instant::now());
        let token = issued("k1", now_secs() + 600);
        auth.verify_token(&token).await.unwrap();
        // The set's TTL passes; the token is presented again and again.
        *jwks.last_fetch.lock().unwrap() = Instant::now().checked_sub(JWKS_TTL);
        let mut refused = None;
        for _ in 0..50 {
            if let Err(problem) = auth.verify_token(&token).await {
                refused = Some(problem);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = refused.expect("the token still counted 5 s after its key was removed");
        assert_eq!(refused.status, 401);
        server.abort();
    }

    #[test]
    fn the_jwks_is_fetched_again_once_its_ttl_has_passed() {
        let now = Instant::now();
        assert!(needs_refresh(None, now, JWKS_TTL), "never fetched");
        assert!(!needs_refresh(Some(now), now + JWKS_TTL / 2, JWKS_TTL));
        assert!(needs_refresh(Some(now), now + JWKS_TTL, JWKS_TTL));
    }
}
