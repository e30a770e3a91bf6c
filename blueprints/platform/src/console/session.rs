//! Who may see the console. Locally, the console makes a one-time login token and writes
//! the URL that carries it to a file (`.run/console-url`, which `up.sh` prints); opening it
//! sets the session cookie and makes a new token for the next login. Without a file (in a
//! container) the URL goes to stderr, the container's log. The cookie is a JWT
//! signed with the session key (HS256), so sessions survive a restart of the console and
//! the console keeps no session table; the CSRF token every POST carries is the key's
//! signature of the session's id.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

pub const COOKIE: &str = "console_session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The shortest session key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    /// The session's id: what the CSRF token signs.
    sid: String,
    exp: u64,
}

/// A signed-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
}

#[derive(Clone)]
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The login token now valid, and the file its URL is written to.
    login: Arc<Mutex<String>>,
    url_file: Option<PathBuf>,
    public_url: String,
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
        let claims = Claims {
            sid: uuid::Uuid::new_v4().simple().to_string(),
            exp: now() + SESSION_TTL.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// The session a cookie value names, if it is signed by this key and not expired.
    pub fn session(&self, cookie: &str) -> Option<Session> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(cookie, &self.decoding, &validation)
            .ok()
            .map(|data| Session {
                id: data.claims.sid,
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

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
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
        };
        assert!(!sessions.csrf_matches(&another, &csrf));
    }

    #[test]
    fn a_short_key_is_refused_and_the_cookie_is_read_from_a_header() {
        assert!(Sessions::new("short", "http://x", None).is_err());
        assert_eq!(
            cookie_value("a=1; console_session=abc.def; b=2"),
            Some("abc.def")
        );
        assert_eq!(cookie_value("a=1"), None);
        let set = Sessions::cookie("v");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
    }
}
