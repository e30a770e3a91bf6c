"""Tests of how the profile sorts a sample into the parts of a request
(ci/bench_profile.py's part_of). ci/bench runs them before it measures anything."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_profile import part_of  # noqa: E402

ROOT = "tokio::runtime::task::harness::poll;"


def test_sha256_belongs_to_its_caller():
    signed = ROOT + "jsonwebtoken::crypto::sign;hmac::Hmac::update;sha2::sha256::compress256"
    keyed = ROOT + "platform::idempotency::request_hash;sha2::sha256::compress256"
    assert part_of(signed) == "JWT and link tokens"
    assert part_of(keyed) == "our code (platform, the generated service)"


def test_the_admission_layer_is_not_token_work_but_its_verify_is():
    passing = ROOT + "<platform::service_auth::Admitted<S> as tower_service::Service<http::request::Request<B>>>::call"
    verifying = passing + ";platform::service_auth::Admission::verify"
    minting = ROOT + "platform::service_auth::Minter::token"
    assert part_of(passing) != "JWT and link tokens"
    assert part_of(verifying) == "JWT and link tokens"
    assert part_of(minting) == "JWT and link tokens"


def test_the_leaf_decides_before_its_callers():
    stack = ROOT + "platform::gateway::auth::Authenticator::authenticate;mi_malloc"
    assert part_of(stack) == "allocator"
    assert part_of(ROOT + "sqlx_postgres::connection::PgConnection::run") == "sqlx and the database protocol"
