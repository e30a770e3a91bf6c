#!/usr/bin/env python3
"""The gateway in OIDC mode (not dev mode) against a real OpenID provider: oidc-provider
(ci/oidc/provider.mjs) on loopback, issuing JWT access tokens with the client-credentials
grant. A second gateway is started with the settings of the one deploy/local/up.sh
started, pointed at the provider instead of the dev issuer, with a 5 s JWKS TTL. Every
wait and loop is bounded.

  1. A token the provider issued (`aud` "shop-api", `scope` space-separated) reads and
     creates orders; one with only orders:read is refused a create (403); a token with
     `aud` an array that contains the API is accepted; the dev issuer's tokens are not.
  2. The provider rotates its signing key (restarted with [new, old]): the new key's tokens
     are accepted at once, without a gateway restart, and the old key's still are.
  3. The provider drops the old key (restarted with [new]): once the TTL has passed, the
     old key's tokens are refused (401) and the new key's accepted.
  4. An end user: a web client runs the authorization code flow with PKCE, the user signs
     in and consents on the provider's pages, and the access token the code is exchanged
     for reads and creates orders at the gateway as that user (its log names them); the
     code cannot be exchanged twice, nor without the PKCE verifier.
"""

import argparse
import base64
import hashlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

from e2e_common import dev_token, environment_of, http_ok, logged, run_checks, wait_until
from e2e_gateway import expect

PROVIDER_PORT = 4455
ISSUER = f"http://127.0.0.1:{PROVIDER_PORT}"
GATEWAY = "http://127.0.0.1:8181"
JWKS_TTL_SECS = 5
# The gateway fetches the JWKS for an unknown key id at most this often (auth.rs).
JWKS_MIN_REFRESH_SECS = 10


def call(method, path, token, body=None):
    """The status of a request to the OIDC-mode gateway."""
    request = urllib.request.Request(GATEWAY + path, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
        request.add_header("Idempotency-Key", str(uuid.uuid4()))
    try:
        with urllib.request.urlopen(request, data=data, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def kid(token):
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


class Provider:
    def __init__(self, args):
        self.args = args
        self.dir = os.path.join(args.workspace, ".run", "oidc")
        os.makedirs(self.dir, exist_ok=True)
        self.process = None

    def node(self, *arguments, **kwargs):
        return subprocess.run(["node", os.path.join(self.args.oidc_dir, "provider.mjs"), *arguments],
                              cwd=self.args.oidc_dir, check=True, capture_output=True, text=True, **kwargs)

    def new_key(self):
        return json.loads(self.node("--new-key").stdout)

    def start(self, keys):
        self.stop()
        path = os.path.join(self.dir, "keys.json")
        with open(path, "w") as f:
            json.dump({"keys": keys}, f)
        log = open(os.path.join(self.dir, "provider.log"), "ab")
        self.process = subprocess.Popen(["node", os.path.join(self.args.oidc_dir, "provider.mjs"),
                                         "--port", str(PROVIDER_PORT), "--keys", path],
                                        cwd=self.args.oidc_dir, stdout=log, stderr=log)
        with open(os.path.join(self.args.workspace, ".run", "oidc-provider.pid"), "w") as f:
            f.write(str(self.process.pid))
        wait_until(lambda: http_ok(f"{ISSUER}/.well-known/openid-configuration"), 30,
                   "oidc-provider answers discovery")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def token(self, client="e2e-robot", scope="orders:read orders:write"):
        status, body = token_request(client, {"grant_type": "client_credentials", "scope": scope})
        expect(status == 200, f"the provider issues {client} a token: {status} {body}")
        return body["access_token"]


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand: the last one goes to the client's redirect URI,
    where nothing listens, and carries the code."""

    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """An end user's browser on the provider's pages: cookies kept, redirects one by one."""

    def __init__(self):
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirects())

    def go(self, url, form=None):
        """(status, Location, body) of one request; a form is POSTed."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(urllib.request.Request(url, data=data), timeout=10) as response:
                return response.status, response.headers.get("Location"), response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Location"), e.read().decode(errors="replace")


REDIRECT_URI = "http://127.0.0.1:4456/callback"


def sign_in(login):
    """The authorization code flow with PKCE as a browser and a web app run it: returns
    (code, verifier). The user signs in as `login` and consents to what the app asked."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = secrets.token_urlsafe(16)
    query = urllib.parse.urlencode({
        "client_id": "e2e-web", "response_type": "code", "redirect_uri": REDIRECT_URI,
        "scope": "openid orders:read orders:write", "resource": "urn:shop-api", "state": state,
        "code_challenge": challenge, "code_challenge_method": "S256"})
    browser = Browser()
    status, location, body = browser.go(f"{ISSUER}/auth?{query}")
    pages = []
    for _ in range(10):  # sign-in, consent and the redirects between them
        expect(status in (302, 303) and location, f"the provider redirects: {status} {body[:200]}")
        url = urllib.parse.urljoin(ISSUER, location)
        if url.startswith(REDIRECT_URI):
            answer = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
            expect(answer.get("state") == [state] and "code" in answer, f"the redirect carries the code: {url}")
            return answer["code"][0], verifier, pages
        status, location, body = browser.go(url)
        if status == 200:
            prompt = re.search(r'name="prompt" value="(\w+)"', body)
            action = re.search(r'<form[^>]*action="([^"]+)"', body)
            expect(prompt and action, f"a sign-in or consent form at {url}: {body[:300]}")
            pages.append(prompt.group(1))
            form = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                form.update({"login": login, "password": "any"})
            status, location, body = browser.go(urllib.parse.urljoin(ISSUER, action.group(1)), form)
    raise AssertionError("the authorization flow did not reach the redirect URI in 10 steps")


def token_request(client, form):
    """(status, body) of a request to the provider's token endpoint as `client` (secret
    `<client>-secret`, HTTP Basic)."""
    request = urllib.request.Request(f"{ISSUER}/token", data=urllib.parse.urlencode(form).encode(), method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{client}:{client}-secret".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def exchange(code, verifier):
    """(status, body) of the token request for a code."""
    return token_request("e2e-web", {"grant_type": "authorization_code", "code": code,
                                     "redirect_uri": REDIRECT_URI, "code_verifier": verifier})


def start_oidc_gateway(args):
    """A second gateway with the first one's settings (its links to the services), in OIDC
    mode against the provider."""
    env = environment_of(args.workspace, "gateway")
    for dev in ("GATEWAY__AUTH__DEV_MODE", "GATEWAY__AUTH__DEV_SECRET"):
        env.pop(dev, None)
    env.update({"GATEWAY__AUTH__ISSUER": ISSUER, "GATEWAY__AUTH__JWKS_URL": f"{ISSUER}/jwks",
                "GATEWAY__AUTH__JWKS_TTL_SECS": str(JWKS_TTL_SECS),
                "GATEWAY__HTTP__ADDR": GATEWAY.removeprefix("http://"),
                "GATEWAY__METRICS__ADDR": "127.0.0.1:9581"})
    log = open(os.path.join(args.workspace, ".run", "gateway-oidc.log"), "ab")
    process = subprocess.Popen([args.gateway], env=env, stdout=log, stderr=log)
    with open(os.path.join(args.workspace, ".run", "gateway-oidc.pid"), "w") as f:
        f.write(str(process.pid))
    wait_until(lambda: http_ok(f"{GATEWAY}/readyz"), 30, "the OIDC-mode gateway ready")
    return process


def answered(expected, method, path, token, what, body=None):
    """Asserts the status of a request; the failure says what came instead."""
    status = call(method, path, token, body)
    expect(status == expected, f"{what}: {method} {path} answered {status}, not {expected}")


def check_tokens(provider, args):
    token = provider.token()
    issued = claims(token)
    expect(issued["aud"] == "shop-api" and issued["scope"] == "orders:read orders:write",
           f"the provider issues a string aud and a space-separated scope: {issued}")
    answered(200, "GET", "/v1/orders", token, "a provider token reads orders")
    answered(201, "POST", "/v1/orders", token, "a provider token creates an order", {})
    reader = provider.token(scope="orders:read")
    answered(403, "POST", "/v1/orders", reader, "a token without orders:write cannot create", {})
    several = provider.token(client="e2e-multi-aud")
    expect(isinstance(claims(several)["aud"], list), f"an aud array: {claims(several)}")
    answered(200, "GET", "/v1/orders", several, "a token whose aud array holds the API is accepted")
    dev = dev_token(args.gateway, args.workspace, "mallory")
    answered(401, "GET", "/v1/orders", dev, "the dev issuer's tokens are refused in OIDC mode")
    print("check 1 passed: oidc-provider's tokens accepted with their scopes (string aud, "
          "space-separated scope; aud array too), orders:read alone refused a create (403), "
          "dev tokens refused (401)")


def check_rotation(provider, first, args, gateway_started):
    old = provider.token()
    second = provider.new_key()
    # A rotation comes long after a gateway started; within JWKS_MIN_REFRESH_SECS of its
    # last fetch, an unknown key id is refused rather than fetched again.
    time.sleep(max(0.0, gateway_started + JWKS_MIN_REFRESH_SECS + 0.5 - time.monotonic()))
    provider.start([second, first])
    new = provider.token()
    expect(kid(new) == second["kid"] and kid(old) == first["kid"],
           f"the new key signs after the rotation: kids {kid(new)} and {kid(old)}")
    started = time.monotonic()
    answered(200, "GET", "/v1/orders", new, "the new key's token is accepted without a gateway restart")
    answered(200, "GET", "/v1/orders", old, "the old key's token is still accepted while published")
    print(f"check 2 passed: after the provider rotated its key, the new key's token was accepted "
          f"at once ({time.monotonic() - started:.2f} s, the JWKS fetched for the unknown kid)")

    provider.start([second])
    removed = time.monotonic()
    wait_until(lambda: call("GET", "/v1/orders", old) == 401, 30, "the removed key's token refused")
    took = time.monotonic() - removed
    answered(200, "GET", "/v1/orders", new, "the new key's token is still accepted")
    print(f"check 3 passed: once the provider dropped the old key, its token was refused after "
          f"{took:.1f} s (TTL {JWKS_TTL_SECS} s, at most one fetch per 10 s); the new key's accepted")


def check_end_user(args):
    login = f"e2e-user-{uuid.uuid4().hex[:8]}"
    code, verifier, pages = sign_in(login)
    expect(pages == ["login", "consent"], f"the user signed in, then consented: {pages}")
    status, body = exchange(code, "x" * 50)
    expect(status == 400 and body.get("error") == "invalid_grant",
           f"the code is refused without its PKCE verifier: {status} {body}")
    code, verifier, _ = sign_in(login)
    status, body = exchange(code, verifier)
    expect(status == 200 and "access_token" in body, f"the code is exchanged for tokens: {status} {body}")
    token = body["access_token"]
    issued = claims(token)
    expect(issued.get("sub") == login and issued.get("aud") == "shop-api",
           f"the access token is the user's, for the API: {issued}")
    answered(200, "GET", "/v1/orders", token, "the user's token reads orders")
    answered(201, "POST", "/v1/orders", token, "the user's token creates an order", {})
    again, _ = exchange(code, verifier)
    expect(again == 400, f"a code is exchanged once only: {again}")
    logged(args.workspace, "gateway-oidc", lambda e: e.get("userId") == login,
           f"the gateway's lines for the read (200) and the create (201) as {login}",
           enough=lambda found: {200, 201} <= {e.get("status") for e in found})
    print(f"check 4 passed: {login} signed in and consented on the provider's pages; the code "
          "(refused without its PKCE verifier, exchanged once only) gave a token that read and "
          "created orders, logged under the user")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True, help="the built gateway binary")
    parser.add_argument("--oidc-dir", required=True, help="ci/oidc with its node_modules")
    args = parser.parse_args()
    provider = Provider(args)
    gateway = None
    try:
        first = provider.new_key()
        provider.start([first])
        gateway = start_oidc_gateway(args)
        gateway_started = time.monotonic()
        check_tokens(provider, args)
        check_rotation(provider, first, args, gateway_started)
        check_end_user(args)
    finally:
        if gateway and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
        provider.stop()
        for pid_file in ("gateway-oidc.pid", "oidc-provider.pid"):
            path = os.path.join(args.workspace, ".run", pid_file)
            if os.path.exists(path):
                os.remove(path)


if __name__ == "__main__":
    run_checks(main)
