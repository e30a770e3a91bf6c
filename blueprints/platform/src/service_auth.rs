//! Identity between the processes of the system (see the ADR on service credentials).
//!
//! Every link the spec allows (the gateway to each service, and each `calls` entry) has its
//! own key, held by the two ends of that link only. The caller signs a short-lived JWT
//! (HS256) with it: `kid` and `sub` name the caller, `iss` is `<system>.<caller>`, `aud` is
//! `<system>.<callee>`, and `act` names the end user the call is made for, if any. A callee
//! admits a call when the caller is one the spec lets call it (else PERMISSION_DENIED,
//! counted in `service_calls_denied_total`) and the token verifies under that link's key
//! (else UNAUTHENTICATED). A service that holds one link's key can therefore mint tokens
//! for that link only: it cannot pose as the gateway, or as another caller, to anyone.
//!
//! The console has a link to each service too, admitted for the RPCs of its pages and an
//! operator's replay of parked outbox rows ([`CONSOLE_METHODS`]) and nothing else.
//!
//! The token travels in the `authorization` gRPC metadata as `Bearer <token>`. The edge's
//! own bearer token never leaves the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};
use tower::{Layer, Service};

use crate::config::{ConfigError, Env};
use crate::context::CORRELATION_METADATA;
use crate::expiring::ExpiringMap;
use crate::resilience::{CallContext, deadline};

/// Shortest key accepted: HS256 needs at least 256 bits of key.
pub const MIN_KEY_LEN: usize = 32;
/// How long a minted token is valid, and how long before expiry a new one is minted.
const TOKEN_TTL: Duration = Duration::from_secs(120);
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// Clock skew tolerated between caller and callee.
const LEEWAY_SECS: u64 = 5;
/// How many end users' tokens a minter keeps, and how many admitted tokens a callee
/// remembers (a few hundred bytes each).
const REMEMBERED: usize = 10_000;
/// Metric label of a caller that names no process of this system.
const UNKNOWN_CALLER: &str = "unknown";

/// The key of one link, from the environment only. Its `Debug` hides it.
#[derive(Clone)]
pub struct LinkKey(Arc<[u8]>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    pub fn new(key: &str) -> Result<Self, String> {
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "must be at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(LinkKey(Arc::from(key.as_bytes())))
    }

    /// `<PREFIX>__<name>`, required: `hint` says where the other end's copy comes from.
    pub fn from_env(env: &Env, name: &str, hint: &'static str) -> Result<Self, ConfigError> {
        let raw = env.required(name, hint)?;
        LinkKey::new(&raw).map_err(|reason| ConfigError::Invalid {
            key: env.key(name),
            reason,
        })
    }
}

/// The `iss` and `aud` form of a process's name: `<system>.<name>`.
fn qualified(system: &str, name: &str) -> String {
    format!("{system}.{name}")
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

/// Mints one caller's tokens for one callee, and reuses each until 30 s before it expires:
/// the one without an end user, and one per end user (`act`, [`REMEMBERED`] users at most),
/// so that the callee, which remembers the tokens it admitted, verifies each once.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    caller: String,
    issuer: String,
    audience: String,
    current: Arc<Mutex<Option<(String, u64)>>>,
    per_user: Arc<ExpiringMap<String, String>>,
}

impl Minter {
    pub fn new(key: &LinkKey, system: &str, caller: &str, callee: &str) -> Self {
        Minter {
            key: EncodingKey::from_secret(&key.0),
            caller: caller.to_string(),
            issuer: qualified(system, caller),
            audience: qualified(system, callee),
            current: Arc::new(Mutex::new(None)),
            per_user: Arc::new(ExpiringMap::new(REMEMBERED)),
        }
    }

    fn mint(&self, now: u64, act: Option<&str>) -> (String, u64) {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: self.caller.clone(),
            iat: now,
            exp: now + TOKEN_TTL.as_secs(),
            act: act.map(str::to_string),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.caller.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .expect("HS256 signing with a byte key cannot fail");
        (token, claims.exp)
    }

    /// A valid token for a call on behalf of `act` (the end user), if any.
    pub fn token(&self, act: Option<&str>) -> String {
        let now = now_secs();
        if let Some(user) = act {
            if let Some(token) = self.per_user.get(user, now) {
                return token;
            }
            let (token, exp) = self.mint(now, act);
            let renew_at = exp.saturating_sub(RENEW_BEFORE.as_secs());
            self.per_user
                .insert(user.to_string(), token.clone(), renew_at, now);
            return token;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, exp)) = current.as_ref()
            && now + RENEW_BEFORE.as_secs() < *exp
        {
            return token.clone();
        }
        let (token, exp) = self.mint(now, None);
        *current = Some((token.clone(), exp));
        token
    }

    /// Adds the credential, with the end user as its `act` claim, to an outgoing request.
    pub fn authorize<T>(&self, request: &mut Request<T>, user: Option<&str>) {
        let bearer = format!("Bearer {}", self.token(user));
        if let Ok(value) = MetadataValue::try_from(bearer) {
            request.metadata_mut().insert("authorization", value);
        }
    }
}

/// A client-side interceptor, for callers that hold a link key (tests).
impl tonic::service::Interceptor for Minter {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.authorize(&mut request, None);
        Ok(request)
    }
}

/// Who made an admitted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The calling process: `gateway` or a service's name.
    pub caller: String,
    /// The end user it calls for (`act`), if any.
    pub user: Option<String>,
}

/// What the admission layer learnt about a call, for the observe layer's log line (which
/// sits outside it, so that refused calls are logged and counted too).
#[derive(Debug, Clone, Default)]
pub struct CallFacts {
    pub caller: Option<String>,
    pub user: Option<String>,
    /// The budget the caller gave (`grpc-timeout`), in milliseconds.
    pub deadline_ms: Option<f64>,
}

/// Where the observe layer finds [`CallFacts`] once the call is answered.
#[derive(Debug, Clone, Default)]
pub struct FactsSlot(pub Arc<std::sync::OnceLock<CallFacts>>);

/// The callee's side: which callers the spec admits, with each link's key.
#[derive(Clone)]
pub struct Admission {
    service: &'static str,
    callers: Arc<HashMap<String, (DecodingKey, Validation)>>,
    /// Every process name of the system, for the denial metric's `caller` label (anything
    /// else is counted as `unknown`, so the label cannot grow without bound).
    known: &'static [&'static str],
    /// Tokens admitted before, until their `exp`: a caller reuses each for 90 s.
    admitted: Arc<ExpiringMap<String, Verified>>,
    /// The budget of the calls made while serving a call that carries no deadline.
    default_deadline: Duration,
}

impl Admission {
    pub fn new(
        system: &str,
        service: &'static str,
        callers: &[(&str, LinkKey)],
        known: &'static [&'static str],
        default_deadline: Duration,
    ) -> Self {
        let callers = callers
            .iter()
            .map(|(caller, key)| {
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_issuer(&[qualified(system, caller)]);
                validation.set_audience(&[qualified(system, service)]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.leeway = LEEWAY_SECS;
                (
                    caller.to_string(),
                    (DecodingKey::from_secret(&key.0), validation),
                )
            })
            .collect();
        Admission {
            service,
            callers: Arc::new(callers),
            known,
            admitted: Arc::new(ExpiringMap::new(REMEMBERED)),
            default_deadline,
        }
    }

    /// Checks a call's credential: who is calling (the `kid`), whether the spec lets it
    /// call this service, and whether the token verifies under that link's key.
    pub fn verify(&self, metadata: &http::HeaderMap) -> Result<Verified, Status> {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no service credential: call this service through the gateway",
                )
            })?;
        let now = now_secs();
        if let Some(verified) = self.admitted.get(token, now) {
            return Ok(verified);
        }
        let caller = jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|header| header.kid)
            .ok_or_else(|| {
                Status::unauthenticated("the service credential names no caller (kid)")
            })?;
        let Some((key, validation)) = self.callers.get(&caller) else {
            let label = self
                .known
                .iter()
                .find(|k| **k == caller)
                .copied()
                .unwrap_or(UNKNOWN_CALLER);
            crate::metrics::record_denied(self.service, label);
            tracing::warn!(
                caller = label,
                "refused a call from a caller the spec does not let call this service"
            );
            return Err(Status::permission_denied(format!(
                "`{label}` may not call {}: add it to the `calls` of `{label}` in the spec",
                self.service
            )));
        };
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| {
                tracing::warn!(caller = %caller, error = %e, "refused a call with an invalid service credential");
                Status::unauthenticated("invalid service credential")
            })?
            .claims;
        if claims.sub != caller {
            return Err(Status::unauthenticated(
                "the credential's subject is not its key's caller",
            ));
        }
        let verified = Verified {
            caller,
            user: claims.act,
        };
        self.admitted
            .insert(token.to_string(), verified.clone(), claims.exp, now);
        Ok(verified)
    }
}

/// The console's name in its service credentials (`kid`, `sub`; `iss` `<system>.console`).
pub const CONSOLE: &str = "console";

/// The console's link admits the RPCs its pages read with, and one an operator acts with:
/// `ReplayParked`, which the console sends only for an operator it signed in with the
/// service's admin scope, naming them (`act`). A saga's retry goes through the gateway.
pub const CONSOLE_METHODS: &[&str] = &["ListRecentSagas", "ListOutbox", "ReplayParked"];

fn console_may_call(verified: Verified, path: &str) -> Result<Verified, Status> {
    if verified.caller != CONSOLE {
        return Ok(verified);
    }
    let method = path.rsplit('/').next().unwrap_or_default();
    if CONSOLE_METHODS.contains(&method) {
        Ok(verified)
    } else {
        Err(Status::permission_denied(format!(
            "the console's link may call {} only, not {method}",
            CONSOLE_METHODS.join(", ")
        )))
    }
}

/// `Server::builder().layer(...)`: admits calls (health checks are always open, for probes)
/// and serves each admitted one inside its [`CallContext`] (deadline from `grpc-timeout`,
/// correlation id, end user), which the calls it makes inherit.
impl<S> Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            admission: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Admitted<S> {
    admission: Admission,
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Admitted<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let arrived = Instant::now();
        if crate::health::is_health_call(&request) {
            return Box::pin(self.inner.call(request));
        }
        let verified = match self
            .admission
            .verify(request.headers())
            .and_then(|v| console_may_call(v, request.uri().path()))
        {
            Ok(verified) => verified,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let incoming = header("grpc-timeout").and_then(deadline::parse_grpc_timeout);
        let correlation_id = crate::context::correlation_id(header(CORRELATION_METADATA));
        if let Some(slot) = request.extensions().get::<FactsSlot>() {
            let _ = slot.0.set(CallFacts {
                caller: Some(verified.caller.clone()),
                user: verified.user.clone(),
                deadline_ms: incoming.map(|d| d.as_secs_f64() * 1000.0),
            });
        }
        let cx = CallContext {
            correlation_id,
            deadline: deadline::serving_deadline(
                arrived,
                incoming,
                self.admission.default_deadline,
            ),
            user: verified.user.clone(),
        };
        request.extensions_mut().insert(verified);
        let future = self.inner.call(request);
        Box::pin(deadline::scope(cx, future))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["gateway", "orders", "billing", "shipping"];

    fn key(s: &str) -> LinkKey {
        LinkKey::new(&s.repeat(32)).unwrap()
    }

    /// `billing` admits the gateway and `orders`, each with its own link key.
    fn billing() -> Admission {
        Admission::new(
            "shop",
            "billing",
            &[("gateway", key("g")), ("orders", key("o"))],
            KNOWN,
            Duration::from_secs(3),
        )
    }

    fn call(minter: &Minter, user: Option<&str>) -> Result<Verified, Status> {
        let mut request = Request::new(());
        minter.authorize(&mut request, user);
        billing().verify(&request.metadata().clone().into_headers())
    }

    #[test]
    fn admitted_callers_pass_with_their_own_link_key_and_the_end_user_as_act() {
        let gateway = Minter::new(&key("g"), "shop", "gateway", "billing");
        let verified = call(&gateway, Some("alice")).unwrap();
        assert_eq!(verified.caller, "gateway");
        assert_eq!(verified.user.as_deref(), Some("alice"));
        let orders = Minter::new(&key("o"), "shop", "orders", "billing");
        assert_eq!(call(&orders, None).unwrap().user, None);
        // Reused until it nears expiry: without an end user, and per end user.
        assert_eq!(orders.token(None), orders.token(None));
        assert_eq!(gateway.token(Some("alice")), gateway.token(Some("alice")));
        assert_ne!(gateway.token(Some("alice")), gateway.token(Some("bob")));
    }

    /// A callee verifies a token once, and remembers it until its `exp`; one it refused
    /// is not remembered (the next presentation is refused again, and counted).
    #[test]
    fn an_admitted_token_is_remembered_until_it_expires_and_a_refused_one_is_not() {
        let billing = billing();
        let gateway = Minter::new(&key("g"), "shop", "gateway", "billing");
        let token = gateway.token(Some("alice"));
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let verified = billing.verify(&headers).unwrap();
        let exp = now_secs() + TOKEN_TTL.as_secs();
        let remembered = |at| billing.admitted.get(token.as_str(), at);
        // Minted within this second or the one before.
        assert!(remembered(exp - 2) == Some(verified.clone()));
        assert_eq!(remembered(exp), None, "not past the token's exp");
        assert_eq!(billing.verify(&headers).unwrap(), verified);

        let forged = Minter::new(&key("o"), "shop", "gateway", "billing").token(None);
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {forged}").parse().unwrap());
        assert!(billing.verify(&headers).is_err());
        assert_eq!(billing.admitted.get(forged.as_str(), now_secs()), None);
        assert_eq!(billing.admitted.len(), 1);
    }

    #[test]
    fn a_caller_the_spec_does_not_admit_is_denied_and_counted() {
        let handle = crate::metrics::handle();
        let shipping = Minter::new(&key("s"), "shop", "shipping", "billing");
        let denied = call(&shipping, None).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let rendered = handle.render();
        assert!(
            rendered
                .lines()
                .any(|l| l.starts_with("service_calls_denied_total{")
                    && l.contains("service=\"billing\"")
                    && l.contains("caller=\"shipping\"")),
            "{rendered}"
        );
        // A made-up caller is counted as unknown, not as a label of its own.
        let stranger = Minter::new(&key("x"), "shop", "x-17", "billing");
        assert_eq!(
            call(&stranger, None).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(handle.render().contains("caller=\"unknown\""));
    }

    #[test]
    fn a_token_under_another_links_key_or_for_another_audience_is_refused() {
        // `orders` signing as the gateway: it holds only its own link's key.
        let forged = Minter::new(&key("o"), "shop", "gateway", "billing");
        assert_eq!(
            call(&forged, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let other_audience = Minter::new(&key("g"), "shop", "gateway", "orders");
        assert_eq!(
            call(&other_audience, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let bare = billing().verify(&http::HeaderMap::new()).unwrap_err();
        assert_eq!(bare.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_consoles_link_admits_its_own_rpcs_only() {
        let console = |user: Option<&str>| Verified {
            caller: "console".into(),
            user: user.map(str::to_string),
        };
        for method in ["ListRecentSagas", "ListOutbox", "ReplayParked"] {
            let admitted = console_may_call(
                console(Some("token:ann")),
                &format!("/shop.orders.v1.OrdersService/{method}"),
            );
            assert_eq!(admitted.unwrap().caller, "console", "{method}");
        }
        for path in [
            "/shop.orders.v1.OrdersService/RetrySaga",
            "/shop.orders.v1.OrdersService/GetOrder",
            "/shop.orders.v1.OrdersService/ListRecentSagas/x",
        ] {
            let refused = console_may_call(console(None), path).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{path}");
        }
        // Other callers are not this check's business.
        let gateway = Verified {
            caller: "gateway".into(),
            user: None,
        };
        assert!(console_may_call(gateway, "/shop.orders.v1.OrdersService/GetOrder").is_ok());
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(LinkKey::new("short").is_err());
    }
}
