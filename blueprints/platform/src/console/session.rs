//! Who may see the console. Locally, the console makes a one-time login token and writes
//! the URL that carries it to a file (`.run/console-url`, which `up.sh` prints); opening it
//! sets the session cookie and makes a new token for the next login. Without a file (in a
//! container) the URL goes to stderr, the container's log. The cookie is a JWT
//! signed with the session key (HS256), so sessions survive a restart of the console and
//! the console keeps no session table; the CSRF token every POST carries is the key's
//! signature of the session's id.
//!
//! An operator signed in with the identity provider (`oidc`) has a session of the same
//! kind whose claims say so; their access token stays on the server, in [`Operators`]: a
//! bounded table that a restart empties (they then sign in again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

use super::oidc::Operator;

pub const COOKIE: &str = "console_session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The shortest session key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;
/// Operators signed in at once, at most: beyond, the one whose token expires first is
/// signed out.
pub const MAX_OPERATORS: usize = 256;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    /// The session's id: what the CSRF token signs.
    sid: String,
    exp: u64,
    /// Signed in with the identity provider: the session is only as good as its entry in
    /// [`Operators`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    op: bool,
}

/// A signed-in browser: with the one-time link, a viewer; with the identity provider, an
/// operator who may act as their scopes allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub operator: Option<Operator>,
}

/// The operators signed in, by session id: their access tokens never leave the server.
#[derive(Clone, Default)]
struct Operators(Arc<Mutex<HashMap<String, Operator>>>);

impl Operators {
    fn insert(&self, sid: &str, operator: Operator, now: u64) {
        let mut table = self.0.lock().expect("operators lock");
        table.retain(|_, o| o.expires_at > now);
        while table.len() >= MAX_OPERATORS {
            let Some(first) = table
                .iter()
                .min_by_key(|(_, o)| o.expires_at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            table.remove(&first);
        }
        table.insert(sid.to_string(), operator);
    }

    fn get(&self, sid: &str, now: u64) -> Option<Operator> {
        let table = self.0.lock().expect("operators lock");
        table.get(sid).filter(|o| o.expires_at > now).cloned()
    }

    fn remove(&self, sid: &str) {
        self.0.lock().expect("operators lock").remove(sid);
    }
}

#[derive(Clone)]
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The login token now valid, and the file its URL is written to.
    login: Arc<Mutex<String>>,
    url_file: Option<PathBuf>,
    public_url: String,
    operators: Operators,
}

/// 244 random bits, URL-safe.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Equal without telling by its timing where two strings differ: compares their hashes.
fn same(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

impl Sessions {
    /// `key` signs sessions (at least [`MIN_KEY_LEN`] bytes); the login URL is
    /// `<public_url>/login?token=…`, written to `url_file` (mode 600) when given.
    pub fn new(key: &str, public_url: &str, url_file: Option<PathBuf>) -> Result<Sessions, String> {
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "the session key has {} bytes; it needs at least {MIN_KEY_LEN}",
                key.len()
            ));
        }
        let sessions = Sessions {
            encoding: EncodingKey::from_secret(key.as_bytes()),
            decoding: DecodingKey::from_secret(key.as_bytes()),
            login: Arc::new(Mutex::new(random_token())),
            url_file,
            public_url: public_url.trim_end_matches('/').to_string(),
            operators: Operators::default(),
        };
        sessions.write_login_url().map_err(|e| {
            format!(
                "cannot write the login URL to {}: {e}",
                sessions
                    .url_file
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            )
        })?;
        Ok(sessions)
    }

    /// The URL that signs in once.
    pub fn login_url(&self) -> String {
        let token = self.login.lock().expect("login token lock").clone();
        format!("{}/login?token={token}", self.public_url)
    }

    fn write_login_url(&self) -> std::io::Result<()> {
        let Some(path) = &self.url_file else {
            // In a container: its log is where the operator looks.
            eprintln!("console login URL (signs in once): {}", self.login_url());
            return Ok(());
        };
        let temp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temp)?;
            writeln!(file, "{}", self.login_url())?;
        }
        std::fs::rename(temp, path)
    }

    /// Spends the login token: a new session's cookie value if `token` is the one now valid;
    /// a new token (and URL file) either way it matched.
    pub fn login(&self, token: &str) -> Option<String> {
        {
            let mut current = self.login.lock().expect("login token lock");
            if !same(token, &current) {
                return None;
            }
            *current = random_token();
        }
        if let Err(e) = self.write_login_url() {
            tracing::warn!(error = %e, "cannot write the next login URL");
        }
        self.new_session(now() + SESSION_TTL.as_secs(), false)
            .map(|(_, cookie)| cookie)
    }

    /// A new session's id and cookie value.
    fn new_session(&self, exp: u64, op: bool) -> Option<(String, String)> {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let claims = Claims {
            sid: sid.clone(),
            exp,
            op,
        };
        let cookie =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()?;
        Some((sid, cookie))
    }

    /// A new session for an operator the identity provider signed in: it ends when their
    /// token expires (or after [`SESSION_TTL`]), or when this console restarts.
    pub fn operator_login(&self, operator: Operator) -> Option<String> {
        let now = now();
        let exp = operator.expires_at.min(now + SESSION_TTL.as_secs());
        if exp <= now {
            return None;
        }
        let (sid, cookie) = self.new_session(exp, true)?;
        self.operators.insert(&sid, operator, now);
        Some(cookie)
    }

    /// Ends a session on the server too (an operator's token is forgotten).
    pub fn logout(&self, session: &Session) {
        self.operators.remove(&session.id);
    }

    fn claims(&self, cookie: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(cookie, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// The session a cookie value names, if it is signed by this key and not expired.
    /// An operator's session also needs their entry (gone after a restart or sign-out).
    pub fn session(&self, cookie: &str) -> Option<Session> {
        let claims = self.claims(cookie)?;
        let operator = if claims.op {
            Some(self.operators.get(&claims.sid, now())?)
        } else {
            None
        };
        Some(Session {
            id: claims.sid,
            operator,
        })
    }

    /// The CSRF token of a session: what its forms carry and its POSTs must send back.
    pub fn csrf(&self, session: &Session) -> String {
        jsonwebtoken::crypto::sign(
            format!("csrf:{}", session.id).as_bytes(),
            &self.encoding,
            Algorithm::HS256,
        )
        .expect("HS256 signs any message")
    }

    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        same(&self.csrf(session), token)
    }

    /// The `Set-Cookie` value of a new session.
    pub fn cookie(value: &str) -> String {
        set_cookie(value, SESSION_TTL.as_secs())
    }

    /// The `Set-Cookie` value that ends the session in the browser.
    pub fn cleared_cookie() -> String {
        set_cookie("", 0)
    }
}

fn set_cookie(value: &str, max_age_secs: u64) -> String {
    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}")
}

/// The value of the cookie `name` (the session's: [`COOKIE`]) in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a test session key of at least 32 bytes";

    fn token_of(url: &str) -> &str {
        url.split_once("token=").unwrap().1
    }

    #[test]
    fn a_login_token_signs_in_once_and_the_file_then_holds_the_next_one() {
        let dir = std::env::temp_dir().join(format!("console-login-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("console-url");
        let sessions = Sessions::new(KEY, "http://127.0.0.1:8090/", Some(file.clone())).unwrap();
        let first = std::fs::read_to_string(&file).unwrap();
        assert!(
            first.starts_with("http://127.0.0.1:8090/login?token="),
            "{first}"
        );
        let cookie = sessions
            .login(token_of(first.trim()))
            .expect("the token signs in");
        assert!(sessions.session(&cookie).is_some());
        assert!(
            sessions.login(token_of(first.trim())).is_none(),
            "used twice"
        );
        let next = std::fs::read_to_string(&file).unwrap();
        assert_ne!(first, next);
        assert!(sessions.login(token_of(next.trim())).is_some());
        assert!(sessions.login("").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_session_is_only_what_this_key_signed_and_survives_a_new_instance() {
        let sessions = Sessions::new(KEY, "http://x", None).unwrap();
        let token = token_of(&sessions.login_url()).to_string();
        let cookie = sessions.login(&token).unwrap();
        // A restarted console (same key) knows the session, another key does not.
        let restarted = Sessions::new(KEY, "http://x", None).unwrap();
        let session = restarted.session(&cookie).expect("same key");
        let other = Sessions::new(&KEY.replace("test", "other"), "http://x", None).unwrap();
        assert!(other.session(&cookie).is_none());
        assert!(sessions.session("not.a.jwt").is_none());
        // Its CSRF token is the same everywhere with the key, and only for this session.
        let csrf = sessions.csrf(&session);
        assert!(restarted.csrf_matches(&session, &csrf));
        assert!(!other.csrf_matches(&session, &csrf));
        let another = Session {
            id: "someone-else".into(),
            operator: None,
        };
        assert!(!sessions.csrf_matches(&another, &csrf));
    }

    fn operator(expires_at: u64) -> Operator {
        Operator {
            subject: "ann".into(),
            scopes: ["orders:admin".to_string()].into_iter().collect(),
            access_token: "a.b.c".into(),
            expires_at,
        }
    }

    #[test]
    fn an_operators_session_lasts_while_the_console_keeps_their_token() {
        let sessions = Sessions::new(KEY, "http://x", None).unwrap();
        let cookie = sessions.operator_login(operator(now() + 600)).unwrap();
        let session = sessions.session(&cookie).expect("signed in");
        assert_eq!(session.operator, Some(operator(now() + 600)));
        assert!(session.operator.as_ref().unwrap().may("orders:admin"));
        // The same key after a restart: the cookie is genuine, but the token is gone.
        let restarted = Sessions::new(KEY, "http://x", None).unwrap();
        assert!(restarted.session(&cookie).is_none());
        // Signed out: gone here too.
        sessions.logout(&session);
        assert!(sessions.session(&cookie).is_none());
        // A token that has expired signs in no one.
        let expired = sessions.operator_login(operator(now() - 1));
        assert!(expired.is_none_or(|c| sessions.session(&c).is_none()));
    }

    #[test]
    fn the_operators_table_is_bounded_and_drops_the_soonest_to_expire() {
        let sessions = Sessions::new(KEY, "http://x", None).unwrap();
        let first = sessions.operator_login(operator(now() + 60)).unwrap();
        let later: Vec<String> = (0..MAX_OPERATORS)
            .map(|i| {
                sessions
                    .operator_login(operator(now() + 600 + i as u64))
                    .unwrap()
            })
            .collect();
        assert!(sessions.session(&first).is_none(), "the soonest to expire");
        assert!(later.iter().all(|c| sessions.session(c).is_some()));
        assert_eq!(sessions.operators.0.lock().unwrap().len(), MAX_OPERATORS);
    }

    #[test]
    fn a_short_key_is_refused_and_the_cookie_is_read_from_a_header() {
        assert!(Sessions::new("short", "http://x", None).is_err());
        assert_eq!(
            cookie_value("a=1; console_session=abc.def; b=2", COOKIE),
            Some("abc.def")
        );
        assert_eq!(cookie_value("a=1", COOKIE), None);
        let set = Sessions::cookie("v");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
    }
}
