//! The console's HTTP server: its settings, its routes, and its run from start to a clean
//! stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::admin::{self, Outcome};
use super::events;
use super::link::{self, Board, Page, Peer};
use super::live::Live;
use super::oidc::{self, Oidc, OidcConfig};
use super::outbox::{self, ListOutboxResponse};
use super::probe::{self, Check, Statuses, Target};
use super::sagas::{self, Sagas};
use super::session::{self, Session, Sessions};
use super::traces::{self, Traces};
use super::{GATEWAY, Topology, map, page};
use crate::adapter::{Bus, BusConfig};
use crate::bus::BusError;
use crate::config::{ConfigError, Env};
use crate::service_auth::{CONSOLE, LinkKey, Minter};
use crate::supervise::Supervisor;

pub const ENV_PREFIX: &str = "CONSOLE";
pub const DEFAULT_ADDR: &str = "127.0.0.1:8090";
pub const DEFAULT_OTLP_ADDR: &str = "127.0.0.1:4318";
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Nothing but the console's own origin: no inline script or style, no frames, and forms
/// that post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// What the login URL starts with (default `http://<addr>`).
    pub public_url: String,
    /// Signs the session cookies (`CONSOLE__SESSION_KEY`, 32 bytes at least).
    pub session_key: String,
    /// Where the login URL is written (`CONSOLE__LOGIN_URL_FILE`).
    pub login_url_file: Option<PathBuf>,
    pub probe_interval: Duration,
    /// Each context's gRPC and metrics address, then the gateway's HTTP and metrics ones.
    pub targets: Vec<Target>,
    /// Where OTLP/HTTP trace exports are received (`CONSOLE__OTLP__ADDR`, default
    /// 127.0.0.1:4318, the OTLP/HTTP port; `off`: not at all).
    pub otlp_addr: Option<SocketAddr>,
    /// The bus the events page reads (`CONSOLE__BUS__ENABLED=false`: none). On SQS the
    /// generated binary adds the routes to the console's queue.
    pub bus: Option<BusConfig>,
    /// Every service, over the console's link to it: the sagas page asks the saga owners,
    /// the outbox page all of them.
    pub links: Vec<Peer>,
    /// Where operators sign in (`CONSOLE__OIDC__*`); none: the one-time link only, which
    /// views.
    pub oidc: Option<OidcConfig>,
    /// The gateway's URL for operators' admin actions (`CONSOLE__GATEWAY__URL`, default
    /// `http://` and the gateway's HTTP address).
    pub gateway_url: String,
}

impl Config {
    /// `CONSOLE__HTTP__ADDR`, `CONSOLE__PUBLIC_URL`, `CONSOLE__SESSION_KEY`,
    /// `CONSOLE__LOGIN_URL_FILE`, `CONSOLE__PROBE_INTERVAL_MS` (2000), and the addresses it
    /// probes: `CONSOLE__<CONTEXT>__GRPC_ADDR` and `__METRICS_ADDR` (the spec's ports by
    /// default), `CONSOLE__GATEWAY__HTTP_ADDR` (127.0.0.1:8080) and `__METRICS_ADDR`
    /// (127.0.0.1:9464); the key of its link to each service, `CONSOLE__<CONTEXT>__KEY`;
    /// `CONSOLE__GATEWAY__URL`; and the identity provider operators sign in with,
    /// `CONSOLE__OIDC__*` (see [`OidcConfig::from_env`]).
    pub fn from_env(env: &Env, topology: &Topology) -> Result<Config, ConfigError> {
        let addr: SocketAddr = env.parse_or("HTTP__ADDR", DEFAULT_ADDR.parse().expect("valid"))?;
        let session_key = env.required(
            "SESSION_KEY",
            "a random secret of 32 bytes or more that signs the session cookies (deploy/local/up.sh makes one in .run/)",
        )?;
        if session_key.len() < session::MIN_KEY_LEN {
            return Err(ConfigError::Invalid {
                key: env.key("SESSION_KEY"),
                reason: format!(
                    "it has {} bytes; use {} or more",
                    session_key.len(),
                    session::MIN_KEY_LEN
                ),
            });
        }
        let login_url_file = env.parse_or("LOGIN_URL_FILE", String::new())?;
        let mut targets: Vec<Target> = Vec::new();
        let mut links = Vec::new();
        let gateway_addr = env.parse_or("GATEWAY__HTTP_ADDR", "127.0.0.1:8080".to_string())?;
        let gateway_url = env.parse_or("GATEWAY__URL", format!("http://{gateway_addr}"))?;
        targets.push(Target {
            name: GATEWAY.to_string(),
            check: Check::Http { addr: gateway_addr },
            metrics_addr: env.parse_or("GATEWAY__METRICS_ADDR", "127.0.0.1:9464".to_string())?,
        });
        for c in topology.contexts {
            let key = c.name.to_uppercase().replace('-', "_");
            let grpc_addr = env.parse_or(&format!("{key}__GRPC_ADDR"), c.grpc_addr.to_string())?;
            let link = LinkKey::from_env(
                env,
                &format!("{key}__KEY"),
                "the key of the console's link to this service, the same value as the service's <NAME>__CALLERS__CONSOLE__KEY (deploy/local/up.sh and deploy/compose-env.sh generate one)",
            )?;
            links.push(Peer {
                node: c,
                addr: grpc_addr.clone(),
                minter: Arc::new(Minter::new(&link, topology.system, CONSOLE, c.name)),
            });
            targets.push(Target {
                name: c.name.to_string(),
                check: Check::Grpc {
                    addr: grpc_addr,
                    service: c.health_service.to_string(),
                },
                metrics_addr: env
                    .parse_or(&format!("{key}__METRICS_ADDR"), c.metrics_addr.to_string())?,
            });
        }
        Ok(Config {
            addr,
            public_url: env.parse_or("PUBLIC_URL", format!("http://{addr}"))?,
            session_key,
            login_url_file: (!login_url_file.is_empty()).then(|| PathBuf::from(login_url_file)),
            probe_interval: Duration::from_millis(env.parse_or("PROBE_INTERVAL_MS", 2000)?),
            targets,
            otlp_addr: match env
                .parse_or("OTLP__ADDR", DEFAULT_OTLP_ADDR.to_string())?
                .as_str()
            {
                "off" => None,
                addr => Some(addr.parse().map_err(|e: std::net::AddrParseError| {
                    ConfigError::Invalid {
                        key: env.key("OTLP__ADDR"),
                        reason: format!("{e} (an address such as 127.0.0.1:4318, or off)"),
                    }
                })?),
            },
            bus: if env.parse_or("BUS__ENABLED", true)? {
                Some(BusConfig::from_env(env)?)
            } else {
                None
            },
            links,
            oidc: OidcConfig::from_env(
                env,
                &topology
                    .contexts
                    .iter()
                    .map(|c| c.admin_scope.to_string())
                    .collect::<Vec<_>>(),
            )?,
            gateway_url,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Session(String),
    #[error("cannot set up the event bus: {0}")]
    Bus(#[from] BusError),
}

struct AppState {
    topology: Topology,
    sessions: Sessions,
    live: Live,
    statuses: Statuses,
    traces: Traces,
    sagas: Board<Sagas>,
    outbox: Board<ListOutboxResponse>,
    links: Vec<Peer>,
    oidc: Option<Oidc>,
    gateway: admin::Gateway,
}

type Shared = Arc<AppState>;

pub struct Console {
    listener: TcpListener,
    state: Shared,
    targets: Vec<Target>,
    probe_interval: Duration,
    bus: Option<Bus>,
    otlp: Option<TcpListener>,
}

impl Console {
    /// Binds the address and makes the first login URL (written to its file).
    pub async fn build(config: Config, topology: Topology) -> Result<Console, StartupError> {
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let public_url = if config.addr.port() == 0 {
            format!("http://{}", listener.local_addr().expect("bound"))
        } else {
            config.public_url.clone()
        };
        let sessions = Sessions::new(&config.session_key, &public_url, config.login_url_file)
            .map_err(StartupError::Session)?;
        let bus = match &config.bus {
            Some(bus) => Some(Bus::connect(bus).await?),
            None => None,
        };
        let otlp = match config.otlp_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Console {
            listener,
            state: Arc::new(AppState {
                topology,
                sessions,
                live: Live::new(),
                statuses: Statuses::new(&config.targets),
                traces: Traces::default(),
                sagas: Board::default(),
                outbox: Board::default(),
                links: config.links,
                oidc: config.oidc.map(|c| Oidc::new(c, &public_url)),
                gateway: admin::Gateway::new(&config.gateway_url),
            }),
            targets: config.targets,
            probe_interval: config.probe_interval,
            bus,
            otlp,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then ends the live streams and stops within a bound.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut tasks = Supervisor::new();
        let stopped = tasks.stopping();
        tasks.spawn(
            "probe",
            probe::run(
                self.targets,
                self.probe_interval,
                self.state.statuses.clone(),
                self.state.live.clone(),
                stopped.clone(),
            ),
        );
        // Only with services to ask: a supervised task that ends stops the console.
        let owners: Vec<Peer> = self
            .state
            .links
            .iter()
            .filter(|p| p.node.lists_sagas)
            .cloned()
            .collect();
        if !owners.is_empty() {
            let page = Page {
                event: sagas::EVENT,
                ask: sagas::fetch,
                render: sagas::render,
            };
            tasks.spawn(
                "sagas",
                link::poll(
                    owners,
                    self.probe_interval,
                    self.state.sagas.clone(),
                    page,
                    self.state.live.clone(),
                    stopped.clone(),
                ),
            );
        }
        if !self.state.links.is_empty() {
            let page = Page {
                event: outbox::EVENT,
                ask: outbox::fetch,
                render: outbox::render,
            };
            tasks.spawn(
                "outbox",
                link::poll(
                    self.state.links.clone(),
                    self.probe_interval,
                    self.state.outbox.clone(),
                    page,
                    self.state.live.clone(),
                    stopped.clone(),
                ),
            );
        }
        if let Some(bus) = &self.bus {
            let topics: Vec<String> = self
                .state
                .topology
                .topics()
                .into_iter()
                .map(str::to_string)
                .collect();
            // The map works without it: a bus the console cannot read only empties the
            // events page, so it is logged rather than fatal.
            match bus.subscriber(self.state.topology.group, &topics) {
                Ok(subscriber) => tasks.spawn(
                    "events",
                    events::run(subscriber, self.state.live.clone(), stopped),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot consume the bus: the events page stays empty")
                }
            }
        }
        if let Some(listener) = self.otlp {
            let traces = self.state.traces.clone();
            let mut stop = tasks.stopping();
            let app = Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    traces::receive(traces.clone(), body)
                }),
            );
            tasks.spawn("otlp", async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { crate::bus::stopped(&mut stop).await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the OTLP receiver stopped");
                }
            });
        }
        let live = self.state.live.clone();
        let stop = tasks.stop_requested(shutdown);
        let served = axum::serve(self.listener, routes(self.state))
            .with_graceful_shutdown(async move {
                stop.await;
                live.close();
            })
            .await;
        if let Err(e) = tasks.stop(DRAIN_TIMEOUT).await {
            tracing::warn!(error = %e, "a console task failed");
        }
        served
    }
}

fn routes(state: Shared) -> Router {
    let signed_in = Router::new()
        .route("/", get(map_page))
        .route("/events", get(events_page))
        .route("/sagas", get(sagas_page))
        .route("/sagas/retry", axum::routing::post(retry_saga))
        .route("/outbox", get(outbox_page))
        .route("/outbox/replay", axum::routing::post(replay_parked))
        .route("/traces", get(traces_page))
        .route("/traces/{trace_id}", get(trace_page))
        .route("/live", get(live_stream))
        .route("/logout", axum::routing::post(logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .merge(signed_in)
        .route("/login", get(login_link).post(login_form))
        .route("/login/oidc", get(oidc_start))
        .route(oidc::CALLBACK_PATH, get(oidc_callback))
        // Liveness and readiness (up.sh waits for /readyz, as it does for the gateway).
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| session::cookie_value(v, session::COOKIE))
        .find_map(|value| state.sessions.session(value))
}

/// Pages without a session go to the login page; the stream and POSTs get 401.
async fn require_session(
    State(state): State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    match session_of(&state, request.headers()) {
        Some(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None if request.method() == axum::http::Method::GET && request.uri().path() != "/live" => {
            Redirect::to("/login").into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            "sign in first: open the URL in .run/console-url",
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn login_link(State(state): State<Shared>, Query(query): Query<LoginQuery>) -> Response {
    match query.token {
        Some(token) => sign_in(&state, &token),
        None => login_page(&state, None).into_response(),
    }
}

fn login_page(state: &AppState, error: Option<&str>) -> Html<String> {
    Html(page::login(
        state.topology.system,
        error,
        state.oidc.as_ref().map(Oidc::issuer),
    ))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form(State(state): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    sign_in(&state, form.token.trim())
}

fn sign_in(state: &AppState, token: &str) -> Response {
    match state.sessions.login(token) {
        Some(cookie) => (
            [(header::SET_COOKIE, Sessions::cookie(&cookie))],
            Redirect::to("/"),
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            login_page(
                state,
                Some("That token is not valid (each one signs in once). Open the URL in .run/console-url again: it holds a new one."),
            ),
        )
            .into_response(),
    }
}

/// The `Set-Cookie` value that ties a sign-in at the identity provider to this browser.
/// SameSite=Lax: the provider sends the browser back with a cross-site redirect, with
/// which a Strict cookie would not come.
fn state_cookie(state: &str, max_age_secs: u64) -> String {
    format!(
        "{}={state}; HttpOnly; SameSite=Lax; Path=/login; Max-Age={max_age_secs}",
        oidc::STATE_COOKIE
    )
}

/// Sends the browser to the identity provider.
async fn oidc_start(State(state): State<Shared>) -> Response {
    let Some(provider) = &state.oidc else {
        return (
            StatusCode::NOT_FOUND,
            login_page(&state, Some("No identity provider is configured (CONSOLE__OIDC__ISSUER): sign in with the one-time link.")),
        )
            .into_response();
    };
    match provider.start().await {
        Ok((url, sign_in)) => (
            [(
                header::SET_COOKIE,
                state_cookie(&sign_in, oidc::PENDING_TTL.as_secs()),
            )],
            Redirect::to(&url),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start an OIDC sign-in");
            (
                StatusCode::BAD_GATEWAY,
                login_page(&state, Some(&e.to_string())),
            )
                .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Where the identity provider sends the browser back with a code.
async fn oidc_callback(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    let failed = |status: StatusCode, why: &str| {
        (
            status,
            [(header::SET_COOKIE, state_cookie("", 0))],
            login_page(&state, Some(why)),
        )
            .into_response()
    };
    let Some(provider) = &state.oidc else {
        return failed(StatusCode::NOT_FOUND, "No identity provider is configured.");
    };
    if let Some(error) = &callback.error {
        let detail = callback.error_description.as_deref().unwrap_or_default();
        return failed(
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider did not sign you in: {error} {detail}"),
        );
    }
    let (Some(code), Some(sign_in)) = (&callback.code, &callback.state) else {
        return failed(
            StatusCode::BAD_REQUEST,
            "The identity provider's answer has no code or state.",
        );
    };
    let started_here = cookie(&headers, oidc::STATE_COOKIE).is_some_and(|c| c == sign_in.as_str());
    if !started_here {
        return failed(
            StatusCode::UNAUTHORIZED,
            "This sign-in was not started in this browser (or took too long): start again.",
        );
    }
    let operator = match provider
        .finish(sign_in, code, crate::service_auth::now_secs())
        .await
    {
        Ok(operator) => operator,
        Err(e) => {
            tracing::warn!(error = %e, "an OIDC sign-in failed");
            return failed(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let subject = operator.subject.clone();
    let Some(session) = state.sessions.operator_login(operator) else {
        return failed(StatusCode::UNAUTHORIZED, "The access token has expired.");
    };
    tracing::info!(operator = %subject, "an operator signed in");
    // A page, not a redirect: the browser came here from the provider's site, and a
    // redirect in that chain would not carry the new SameSite=Strict cookie; a navigation
    // this page starts does.
    (
        AppendHeaders([
            (header::SET_COOKIE, Sessions::cookie(&session)),
            (header::SET_COOKIE, state_cookie("", 0)),
        ]),
        Html(page::signed_in(state.topology.system)),
    )
        .into_response()
}

/// A cookie's value in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| session::cookie_value(v, name))
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A POST's CSRF token: the form's `csrf` field or the `X-CSRF-Token` header.
fn csrf_ok(state: &AppState, session: &Session, headers: &HeaderMap, form_token: &str) -> bool {
    let header = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let token = header.unwrap_or(form_token);
    !token.is_empty() && state.sessions.csrf_matches(session, token)
}

async fn logout(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &session, &headers, &form.csrf) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    state.sessions.logout(&session);
    (
        [(header::SET_COOKIE, Sessions::cleared_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

/// A whole page for `session`: its title, path (for the navigation) and content.
fn page_for(
    state: &AppState,
    session: &Session,
    title: &str,
    path: &str,
    main: &str,
) -> Html<String> {
    Html(page::render(
        state.topology.system,
        title,
        path,
        &state.sessions.csrf(session),
        &who(session),
        main,
    ))
}

/// Who the header says is signed in.
fn who(session: &Session) -> String {
    match &session.operator {
        Some(o) => format!("operator {}", o.subject),
        None => "viewer (one-time link)".to_string(),
    }
}

async fn map_page(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
) -> Html<String> {
    let statuses = state.statuses.get();
    let main = format!(
        "{}\n{}",
        map::svg(&state.topology, &statuses),
        map::table(&state.topology, &statuses)
    );
    page_for(&state, &session, "Map", "/", &main)
}

async fn sagas_page(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
) -> Html<String> {
    // The board is one snapshot for every page; the owners whose sagas this session may
    // retry are the page's, and its script adds their Retry buttons.
    let main = format!(
        "<p>Each saga owner's newest {} instances, newest first, as the owner reports them every few seconds.</p><div data-testid=\"sagas\" data-admin-of=\"{}\">{}</div>",
        sagas::SHOWN_PER_OWNER,
        admin_of(
            &session,
            state.topology.contexts.iter().filter(|c| c.lists_sagas)
        ),
        sagas::render(&state.sagas.snapshot())
    );
    page_for(&state, &session, "Sagas", "/sagas", &main)
}

/// The services whose admin actions this session may take (their admin scope is the
/// operator's), among `candidates`.
fn admin_of<'a>(
    session: &Session,
    candidates: impl Iterator<Item = &'a super::ContextNode>,
) -> String {
    let names: Vec<&str> = candidates
        .filter(|c| {
            session
                .operator
                .as_ref()
                .is_some_and(|o| o.may(c.admin_scope))
        })
        .map(|c| c.name)
        .collect();
    page::escape(&names.join(" "))
}

async fn outbox_page(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
) -> Html<String> {
    let main = format!(
        "<p>Per service, the events waiting to be published and the rows parked because the broker refused them for good, as each service reports them every few seconds. Fix the cause first (a parked row is refused again, and parked again, until it is).</p><div data-testid=\"outbox\" data-admin-of=\"{}\">{}</div>",
        admin_of(&session, state.topology.contexts.iter()),
        outbox::render(&state.outbox.snapshot())
    );
    page_for(&state, &session, "Outbox", "/outbox", &main)
}

#[derive(serde::Deserialize)]
struct ReplayForm {
    service: String,
    id: String,
    #[serde(default)]
    csrf: String,
}

/// An operator's replay of a parked outbox row, over the console's link to its service.
async fn replay_parked(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Response {
    if !csrf_ok(&state, &session, &headers, &form.csrf) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    let Some(peer) = state.links.iter().find(|p| p.node.name == form.service) else {
        return (StatusCode::NOT_FOUND, "no service of that name").into_response();
    };
    let Outcome { status, message } =
        outbox::replay(peer, session.operator.as_ref(), &form.id).await;
    tracing::info!(
        operator = session.operator.as_ref().map_or("", |o| o.subject.as_str()),
        service = peer.node.name,
        row = %form.id,
        status = status.as_u16(),
        "outbox replay"
    );
    (status, message).into_response()
}

#[derive(serde::Deserialize)]
struct RetryForm {
    owner: String,
    subject: String,
    id: String,
    #[serde(default)]
    csrf: String,
}

/// An operator's retry of a saga waiting for one, through the gateway with their token.
async fn retry_saga(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<RetryForm>,
) -> Response {
    if !csrf_ok(&state, &session, &headers, &form.csrf) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    let Some(owner) = state
        .topology
        .contexts
        .iter()
        .find(|c| c.lists_sagas && c.name == form.owner)
    else {
        return (StatusCode::NOT_FOUND, "no saga owner of that name").into_response();
    };
    let Outcome { status, message } = state
        .gateway
        .retry_saga(session.operator.as_ref(), owner, &form.subject, &form.id)
        .await;
    tracing::info!(
        operator = session.operator.as_ref().map_or("", |o| o.subject.as_str()),
        owner = owner.name,
        saga = %form.id,
        status = status.as_u16(),
        "saga retry"
    );
    (status, message).into_response()
}

async fn traces_page(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
) -> Html<String> {
    let main = traces::table(&state.traces.recent(200));
    page_for(&state, &session, "Traces", "/traces", &main)
}

async fn trace_page(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
    axum::extract::Path(trace_id): axum::extract::Path<String>,
) -> Response {
    let Some(spans) = state.traces.get(&trace_id.to_ascii_lowercase()) else {
        let main = format!(
            "<p>No span of trace <code>{}</code> has arrived (yet, or any more: the console keeps the newest {} spans). Processes export their spans every few seconds; reload in a moment.</p>",
            page::escape(&trace_id),
            traces::SPAN_BUDGET
        );
        return (
            StatusCode::NOT_FOUND,
            page_for(&state, &session, "Trace", "/traces", &main),
        )
            .into_response();
    };
    let main = format!(
        "<p>Trace <code>{}</code>: {} spans.</p>{}",
        page::escape(&trace_id),
        spans.len(),
        traces::svg(&spans)
    );
    page_for(&state, &session, "Trace", "/traces", &main).into_response()
}

async fn events_page(
    State(state): State<Shared>,
    axum::Extension(session): axum::Extension<Session>,
) -> Html<String> {
    page_for(
        &state,
        &session,
        "Events",
        "/events",
        &events::table(&state.live.rows("event")),
    )
}

#[derive(serde::Deserialize)]
struct LiveQuery {
    after: Option<String>,
}

/// The page's stream: after `Last-Event-ID` on a reconnect, or after `?after=` (the newest
/// row the page was rendered with) on the first connect.
async fn live_stream(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.after.as_deref());
    state.live.stream(last).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;
    use crate::console::fixtures::{ORDERS, operator};

    const KEY: &str = "a test session key of at least 32 bytes";
    const TOPOLOGY: Topology = Topology {
        system: "shop",
        group: "shop.console",
        contexts: &[ORDERS],
        edges: &[],
    };

    fn app() -> (Router, Sessions) {
        app_with(None)
    }

    /// Its gateway and orders are nowhere (127.0.0.1:9): a test that reached them would
    /// fail.
    fn app_with(oidc: Option<OidcConfig>) -> (Router, Sessions) {
        let sessions = Sessions::new(KEY, "http://console", None).unwrap();
        let router = routes(Arc::new(AppState {
            topology: TOPOLOGY,
            sessions: sessions.clone(),
            live: Live::new(),
            statuses: Statuses::new(&[]),
            traces: Traces::default(),
            sagas: Board::default(),
            outbox: Board::default(),
            links: vec![link::test_peer(&TOPOLOGY.contexts[0], "127.0.0.1:9")],
            oidc: oidc.map(|c| Oidc::new(c, "http://console")),
            gateway: admin::Gateway::new("http://127.0.0.1:9"),
        }));
        (router, sessions)
    }

    async fn send(router: &Router, request: axum::http::Request<Body>) -> Response {
        router.clone().oneshot(request).await.unwrap()
    }

    fn get(path: &str, cookie: Option<&str>) -> axum::http::Request<Body> {
        let mut builder = axum::http::Request::get(path);
        if let Some(c) = cookie {
            builder = builder.header(header::COOKIE, format!("{}={c}", session::COOKIE));
        }
        builder.body(Body::empty()).unwrap()
    }

    async fn signed_in(router: &Router, sessions: &Sessions) -> String {
        let url = sessions.login_url();
        let path = url.strip_prefix("http://console").unwrap();
        let response = send(router, get(path, None)).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
        session::cookie_value(set.split(';').next().unwrap(), session::COOKIE)
            .unwrap()
            .to_string()
    }

    /// Nothing to probe, no bus, no OTLP receiver and no service to ask.
    fn bare_config() -> Config {
        Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            public_url: String::new(),
            session_key: KEY.to_string(),
            login_url_file: None,
            probe_interval: Duration::from_millis(50),
            targets: Vec::new(),
            otlp_addr: None,
            bus: None,
            links: Vec::new(),
            oidc: None,
            gateway_url: "http://127.0.0.1:9".into(),
        }
    }

    #[tokio::test]
    async fn a_console_without_services_to_ask_serves_until_it_is_stopped() {
        let console = Console::build(bare_config(), TOPOLOGY).await.unwrap();
        let addr = console.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(console.run_until_stopped(async {
            let _ = stopped.await;
        }));
        // Several probe intervals: a supervised task that ended would have stopped it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!run.is_finished(), "the console stopped by itself");
        let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        assert_eq!(ready.status(), reqwest::StatusCode::OK);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("stops within the drain bound")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn without_a_session_pages_redirect_to_login_and_the_stream_is_401() {
        let (router, _) = app();
        let page = send(&router, get("/", None)).await;
        assert_eq!(page.status(), StatusCode::SEE_OTHER);
        assert_eq!(page.headers()[header::LOCATION], "/login");
        assert_eq!(
            send(&router, get("/live", None)).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let forged = send(&router, get("/", Some("e30.e30.e30"))).await;
        assert_eq!(forged.status(), StatusCode::SEE_OTHER);
        let login = send(&router, get("/login?token=wrong", None)).await;
        assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn every_response_carries_the_strict_csp_and_a_session_sees_the_map() {
        let (router, sessions) = app();
        let cookie = signed_in(&router, &sessions).await;
        let page = send(&router, get("/", Some(&cookie))).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()["content-security-policy"],
            CONTENT_SECURITY_POLICY
        );
        let login = send(&router, get("/login", None)).await;
        assert_eq!(
            login.headers()["content-security-policy"],
            CONTENT_SECURITY_POLICY
        );
        let body = axum::body::to_bytes(page.into_body(), 1 << 20)
            .await
            .unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            html.contains("data-testid=\"context\" data-name=\"orders\""),
            "{html}"
        );
        assert!(
            !html.contains("style=") && !html.contains("<script>"),
            "inline code breaks the CSP"
        );
    }

    #[tokio::test]
    async fn a_post_without_the_sessions_csrf_token_is_403() {
        let (router, sessions) = app();
        let cookie = signed_in(&router, &sessions).await;
        let session = sessions.session(&cookie).unwrap();
        let post = |csrf: &str| {
            axum::http::Request::post("/logout")
                .header(header::COOKIE, format!("{}={cookie}", session::COOKIE))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={csrf}")))
                .unwrap()
        };
        assert_eq!(
            send(&router, post("")).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            send(&router, post("forged")).await.status(),
            StatusCode::FORBIDDEN
        );
        let ok = send(&router, post(&sessions.csrf(&session))).await;
        assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    }

    async fn body_of(response: Response) -> String {
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn retry(cookie: &str, csrf: &str) -> axum::http::Request<Body> {
        axum::http::Request::post("/sagas/retry")
            .header(header::COOKIE, format!("{}={cookie}", session::COOKIE))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("x-csrf-token", csrf)
            .body(Body::from(
                "owner=orders&subject=0190c0de-0000-7000-8000-000000000001&id=0190c0de-0000-7000-8000-000000000002",
            ))
            .unwrap()
    }

    #[tokio::test]
    async fn only_an_operator_with_the_owners_admin_scope_is_offered_retry_and_a_viewer_is_refused_it()
     {
        let (router, sessions) = app();
        let viewer = signed_in(&router, &sessions).await;
        let page = body_of(send(&router, get("/sagas", Some(&viewer))).await).await;
        assert!(page.contains("data-admin-of=\"\""), "{page}");
        assert!(page.contains("viewer"), "{page}");
        let csrf = sessions.csrf(&sessions.session(&viewer).unwrap());
        let refused = send(&router, retry(&viewer, &csrf)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(body_of(refused).await.contains("orders:admin"));

        let admin = sessions
            .operator_login(operator(&["orders:admin"]))
            .unwrap();
        let page = body_of(send(&router, get("/sagas", Some(&admin))).await).await;
        assert!(page.contains("data-admin-of=\"orders\""), "{page}");
        assert!(page.contains("operator ann"), "{page}");
        let reader = sessions.operator_login(operator(&["orders:read"])).unwrap();
        let page = body_of(send(&router, get("/sagas", Some(&reader))).await).await;
        assert!(page.contains("data-admin-of=\"\""), "{page}");
        // An admin's POST without the CSRF token is refused before anything is sent.
        assert_eq!(
            send(&router, retry(&admin, "")).await.status(),
            StatusCode::FORBIDDEN
        );
        // With it, it goes to the gateway (nowhere here: 502, which says so).
        let csrf = sessions.csrf(&sessions.session(&admin).unwrap());
        let sent = send(&router, retry(&admin, &csrf)).await;
        assert_eq!(sent.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn the_outbox_page_offers_replay_to_an_operator_with_the_services_admin_scope_only() {
        let (router, sessions) = app();
        let replay = |cookie: &str, csrf: &str| {
            axum::http::Request::post("/outbox/replay")
                .header(header::COOKIE, format!("{}={cookie}", session::COOKIE))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header("x-csrf-token", csrf)
                .body(Body::from(
                    "service=orders&id=0190c0de-0000-7000-8000-000000000003",
                ))
                .unwrap()
        };
        let viewer = signed_in(&router, &sessions).await;
        let page = body_of(send(&router, get("/outbox", Some(&viewer))).await).await;
        assert!(
            page.contains("data-testid=\"outbox\" data-admin-of=\"\""),
            "{page}"
        );
        let csrf = sessions.csrf(&sessions.session(&viewer).unwrap());
        let refused = send(&router, replay(&viewer, &csrf)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);

        let admin = sessions
            .operator_login(operator(&["orders:admin"]))
            .unwrap();
        let page = body_of(send(&router, get("/outbox", Some(&admin))).await).await;
        assert!(
            page.contains("data-testid=\"outbox\" data-admin-of=\"orders\""),
            "{page}"
        );
        assert_eq!(
            send(&router, replay(&admin, "")).await.status(),
            StatusCode::FORBIDDEN
        );
        // Permitted: it goes to orders over the link (nowhere here: 502).
        let csrf = sessions.csrf(&sessions.session(&admin).unwrap());
        let sent = send(&router, replay(&admin, &csrf)).await;
        assert_eq!(sent.status(), StatusCode::BAD_GATEWAY);
    }

    fn provider() -> OidcConfig {
        OidcConfig {
            issuer: "http://127.0.0.1:9".into(),
            client_id: "console".into(),
            client_secret: None,
            scopes: "openid orders:admin".into(),
            resource: None,
        }
    }

    #[tokio::test]
    async fn the_login_page_offers_the_identity_provider_only_when_there_is_one() {
        let (without, _) = app();
        let page = body_of(send(&without, get("/login", None)).await).await;
        assert!(!page.contains("/login/oidc"), "{page}");
        assert_eq!(
            send(&without, get("/login/oidc", None)).await.status(),
            StatusCode::NOT_FOUND
        );
        let (with, _) = app_with(Some(provider()));
        let page = body_of(send(&with, get("/login", None)).await).await;
        assert!(page.contains("href=\"/login/oidc\""), "{page}");
        // Its discovery document cannot be read: said on the login page.
        let failed = send(&with, get("/login/oidc", None)).await;
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        assert!(body_of(failed).await.contains("discovery"));
    }

    #[tokio::test]
    async fn a_callback_whose_state_this_browser_did_not_start_signs_in_no_one() {
        let (router, _) = app_with(Some(provider()));
        let callback = |cookie: Option<&str>| {
            let mut builder = axum::http::Request::get("/login/callback?code=c&state=s1");
            if let Some(c) = cookie {
                builder = builder.header(header::COOKIE, c);
            }
            builder.body(Body::empty()).unwrap()
        };
        for cookie in [None, Some("console_oidc_state=s2")] {
            let response = send(&router, callback(cookie)).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{cookie:?}");
            let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
            assert!(set.starts_with("console_oidc_state=;"), "{set}");
        }
        // The browser's own state, but one this console never started.
        let unknown = send(&router, callback(Some("console_oidc_state=s1"))).await;
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        assert!(body_of(unknown).await.contains("start again"));
        let refused = send(
            &router,
            get(
                "/login/callback?error=access_denied&error_description=no",
                None,
            ),
        )
        .await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
}
