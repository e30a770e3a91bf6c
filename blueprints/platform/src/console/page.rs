//! The HTML around every page: one stylesheet and one script of the console's own, the
//! CSRF token for the script's POSTs, the navigation and the connection indicator.

use std::fmt::Write;

/// Text made safe for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Every page's head up to its own lines: the document, its title and the stylesheet.
fn head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<link rel=\"stylesheet\" href=\"/assets/console.css\">",
        escape(title)
    )
}

/// The pages, for the navigation: path and title.
pub const PAGES: &[(&str, &str)] = &[
    ("/", "Map"),
    ("/events", "Events"),
    ("/sagas", "Sagas"),
    ("/outbox", "Outbox"),
    ("/traces", "Traces"),
];

/// A whole page: `title`, the active `path`, who is signed in, and `main`'s inner HTML.
pub fn render(system: &str, title: &str, path: &str, csrf: &str, who: &str, main: &str) -> String {
    let mut nav = String::new();
    for (href, name) in PAGES {
        let current = if *href == path {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{name}</a>");
    }
    let head = head(&format!("{title} · {system} console"));
    let system = escape(system);
    let title = escape(title);
    let csrf = escape(csrf);
    let who = escape(who);
    format!(
        r#"{head}
<meta name="csrf-token" content="{csrf}">
<script src="/assets/console.js" defer></script>
</head>
<body>
<header>
<p class="brand">{system} console</p>
<nav aria-label="Pages">{nav}</nav>
<p data-testid="connection" data-state="reconnecting" role="status" aria-live="polite">connecting…</p>
<p class="who" data-testid="who">{who}</p>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Sign out</button></form>
</header>
<main>
<h1>{title}</h1>
{main}
</main>
</body>
</html>
"#
    )
}

/// The page that asks for the login token (no session yet), with `error` said first, and a
/// link to sign in with the identity provider when there is one (`issuer`).
pub fn login(system: &str, error: Option<&str>, issuer: Option<&str>) -> String {
    let head = head(&format!("Sign in · {system} console"));
    let system = escape(system);
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    let operators = issuer.map_or(String::new(), |issuer| {
        format!(
            "<h2>Operators</h2>\n<p><a data-testid=\"oidc-login\" href=\"/login/oidc\">Sign in with the identity provider</a> (<code>{}</code>) to act as your scopes allow: retry a saga with its owner's admin scope.</p>\n<h2>Viewers</h2>\n",
            escape(issuer)
        )
    });
    format!(
        r#"{head}
</head>
<body>
<main>
<h1>Sign in to the {system} console</h1>
{error}
{operators}<p>Open the URL that <code>deploy/local/up.sh</code> printed (it is also in <code>.run/console-url</code>), or paste its token here.</p>
<form method="post" action="/login">
<label for="token">Login token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"#
    )
}

/// The page an operator lands on from the identity provider: it moves on to the map itself
/// (a navigation of the console's own, which carries the SameSite=Strict session cookie).
pub fn signed_in(system: &str) -> String {
    let head = head(&format!("Signed in · {system} console"));
    format!(
        r#"{head}
<meta http-equiv="refresh" content="0;url=/">
</head>
<body>
<main>
<h1>Signed in</h1>
<p><a href="/">Go on to the console</a>.</p>
</main>
</body>
</html>
"#
    )
}
