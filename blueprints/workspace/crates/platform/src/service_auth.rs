//! The service credential: services trust only calls that carry a short-lived token signed
//! by the gateway (HS256 over a secret shared by the gateway and the services, see the ADR on
//! service authentication). The gateway mints one token per audience and reuses it until it
//! is close to expiry; each service checks signature, issuer, its own audience and expiry.
//!
//! The token travels in the `authorization` gRPC metadata as `Bearer <token>`; the end user
//! the gateway acts for, if any, travels in `x-user-id` and in the token's `act` claim.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::config::{ConfigError, Env};

/// Metadata key of the end user on whose behalf the gateway calls.
pub const USER_ID: &str = "x-user-id";
/// Shortest secret accepted: HS256 needs at least 256 bits of key.
pub const MIN_SECRET_LEN: usize = 32;
/// How long a minted token is valid, and how long before expiry a new one is minted.
const TOKEN_TTL: Duration = Duration::from_secs(120);
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// Clock skew tolerated between gateway and services.
const LEEWAY_SECS: u64 = 5;

/// The shared secret, read from `<PREFIX>__SERVICE_AUTH__SECRET`. Its `Debug` hides it.
#[derive(Clone)]
pub struct ServiceSecret(Arc<[u8]>);

impl std::fmt::Debug for ServiceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceSecret(..)")
    }
}

impl ServiceSecret {
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(ServiceSecret(Arc::from(secret.as_bytes())))
    }

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw = env.required(
            "SERVICE_AUTH__SECRET",
            "set it to the secret shared with the gateway (at least 32 characters; deploy/local/up.sh generates one)",
        )?;
        ServiceSecret::new(&raw).map_err(|reason| ConfigError::Invalid {
            key: env.key("SERVICE_AUTH__SECRET"),
            reason,
        })
    }
}

/// `iss` of every service token.
fn issuer(system: &str) -> String {
    format!("{system}.gateway")
}

/// `aud` of the tokens a service accepts: `<system>.<service>`.
fn audience(system: &str, service: &str) -> String {
    format!("{system}.{service}")
}

/// A random secret of 64 hex characters (244 random bits, from two v4 UUIDs: no extra
/// dependency): for tests, and for API keys.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    /// The end user the call is made for, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    act: Option<String>,
}

/// Seconds since the Unix epoch, as JWT claims count time.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Mints the gateway's tokens for one service, caching the current one.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    issuer: String,
    audience: String,
    current: Arc<Mutex<Option<(String, u64)>>>,
}

impl Minter {
    pub fn new(secret: &ServiceSecret, system: &str, service: &str) -> Self {
        Minter {
            key: EncodingKey::from_secret(&secret.0),
            issuer: issuer(system),
            audience: audience(system, service),
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// A valid token, minted again when the cached one is within 30 s of expiry.
    pub fn token(&self) -> String {
        let now = now_secs();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, exp)) = current.as_ref()
            && now + RENEW_BEFORE.as_secs() < *exp
        {
            return token.clone();
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: self.issuer.clone(),
            iat: now,
            exp: now + TOKEN_TTL.as_secs(),
            act: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .expect("HS256 signing with a byte key cannot fail");
        *current = Some((token.clone(), claims.exp));
        token
    }

    /// Adds the credential (and the end user, if known) to an outgoing request.
    pub fn authorize<T>(&self, request: &mut Request<T>, user: Option<&str>) {
        let bearer = format!("Bearer {}", self.token());
        if let Ok(value) = MetadataValue::try_from(bearer) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(value) = user.and_then(|u| MetadataValue::try_from(u).ok()) {
            request.metadata_mut().insert(USER_ID, value);
        }
    }
}

/// A client-side interceptor, for callers that hold the secret (the gateway, tests).
impl tonic::service::Interceptor for Minter {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.authorize(&mut request, None);
        Ok(request)
    }
}

/// The server side: a tonic interceptor that refuses calls without a valid credential
/// for `service`.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Arc<Validation>,
}

impl Verifier {
    pub fn new(secret: &ServiceSecret, system: &str, service: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer(system)]);
        validation.set_audience(&[audience(system, service)]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        Verifier {
            key: DecodingKey::from_secret(&secret.0),
            validation: Arc::new(validation),
        }
    }

    pub fn verify(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no service credential: call this service through the gateway",
                )
            })?;
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(error = %e, "refused a call with an invalid service credential");
                Status::unauthenticated("invalid service credential")
            })
    }
}

impl tonic::service::Interceptor for Verifier {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.verify(request.metadata())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ServiceSecret {
        ServiceSecret::new(&s.repeat(32)).unwrap()
    }

    fn check(minter: &Minter, verifier: &Verifier) -> Result<(), Status> {
        let mut request = Request::new(());
        minter.authorize(&mut request, Some("alice"));
        verifier.verify(request.metadata())
    }

    #[test]
    fn a_token_for_the_right_audience_passes() {
        let s = secret("a");
        let minter = Minter::new(&s, "shop", "orders");
        let verifier = Verifier::new(&s, "shop", "orders");
        check(&minter, &verifier).unwrap();
        // Cached: the same token until it nears expiry.
        assert_eq!(minter.token(), minter.token());
    }

    #[test]
    fn wrong_audience_secret_or_no_token_is_refused() {
        let s = secret("a");
        let verifier = Verifier::new(&s, "shop", "orders");
        let other_audience = Minter::new(&s, "shop", "billing");
        let other_secret = Minter::new(&secret("b"), "shop", "orders");
        for minter in [other_audience, other_secret] {
            let refused = check(&minter, &verifier).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
        let bare = verifier.verify(Request::new(()).metadata()).unwrap_err();
        assert_eq!(bare.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(ServiceSecret::new("short").is_err());
    }
}
