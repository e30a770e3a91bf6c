"""Tests of the same-SQL limit's script builder and statement check (ci/bench_limit.py);
ci/bench runs them before it measures anything."""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_limit  # noqa: E402
from bench_common import BenchError  # noqa: E402

CLAIM = "SELECT aggregate_id FROM ( SELECT aggregate_id, min(created_at) AS since FROM ( ... ) AS pending"
READ = "SELECT id, topic, event_type, aggregate_id, payload, headers FROM outbox WHERE ..."
MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1)"


def services_post(orders_passes=0.72, orders_found=0.61, billing_passes=0.32, billing_found=0.31):
    """A POST's mix as StatementProfile lists it, with the relays' passes as given."""
    rows = [("shop_orders", 1.0, "WITH claimed AS (INSERT INTO idempotency_keys ..."),
            ("shop_billing", 1.0, "INSERT INTO inbox (event_id, topic, event_type) VALUES ($1, $2, $3)"),
            ("shop_billing", 1.0, "WITH claimed AS (INSERT INTO idempotency_keys ...")]
    for database, passes, found in (("shop_orders", orders_passes, orders_found),
                                    ("shop_billing", billing_passes, billing_found)):
        rows += [(database, passes, "BEGIN"), (database, passes, "SET LOCAL synchronous_commit = off"),
                 (database, passes, CLAIM), (database, found, READ), (database, found, MARK),
                 (database, found, "COMMIT"), (database, passes - found, "ROLLBACK")]
    rows += [("shop_billing", 1.0, "BEGIN"), ("shop_billing", 1.0, "COMMIT")]
    return [{"database": d, "per_request": n, "query": q} for d, n, q in rows]


def built(tmp_path, sent, template="post.sql"):
    script = tmp_path / "script.sql"
    gates = bench_limit.build(os.path.join(bench_limit.SQL, template), sent, str(script))
    return gates, script.read_text()


def test_each_block_runs_as_often_as_the_services_sent_its_statement(tmp_path):
    gates, script = built(tmp_path, services_post())
    by = {(g["database"], g["statement"]): g for g in gates}
    orders_pass = by[("shop_orders", "min(created_at) AS since")]
    assert orders_pass["per_request"] == pytest.approx(0.72)
    assert (orders_pass["utility"], orders_pass["utility_else"]) == (2, 0)  # BEGIN, SET LOCAL
    found = by[("shop_orders", "UPDATE outbox SET published_at")]
    assert found["parent"] == "min(created_at) AS since"
    assert (found["utility"], found["utility_else"]) == (1, 1)  # COMMIT, else ROLLBACK
    # Gates in a million: a pass 0.72 of requests; finding rows 0.61 / 0.72 of passes.
    thresholds = [int(t) for t in re.findall(r"\\if :gate\d+ <= (\d+)", script)]
    assert thresholds[:2] == [720000, round(0.61 / 0.72 * 1_000_000)]
    # The included relay is each service's, and no marker or placeholder is left.
    sent_lines = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    assert "<database>" not in sent_lines and not re.search(r"^-- @", script, re.M)
    assert script.count("\\if") == script.count("\\endif") == 5


def test_a_block_the_services_never_ran_never_runs(tmp_path):
    _, script = built(tmp_path, services_post(billing_passes=0.0, billing_found=0.0))
    thresholds = [int(t) for t in re.findall(r"\\if :gate\d+ <= (\d+)", script)]
    assert thresholds[3:] == [0, 0]


def test_transaction_statements_are_counted_from_their_blocks_runs():
    # What pg_stat_statements shows of the script: every query, but BEGIN and COMMIT once
    # per connection. The relays claimed 0.72 + 0.32 times, found 0.61 + 0.31.
    sent = [{"database": "bench_pipeline", "per_request": n, "query": q} for n, q in (
        (1.0, "WITH claimed AS (INSERT INTO idempotency_keys ..."), (1.0, "INSERT INTO inbox ..."),
        (1.0, "WITH claimed AS (INSERT INTO idempotency_keys ..."),
        (1.04, "SELECT coalesce(array_agg(aggregate_id), $1) AS claimed FROM (... min(created_at) AS since ..."),
        (0.92, "SELECT coalesce(array_agg(id), $2) AS sent ..."),
        (0.92, "UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])"),
        (0.001, "BEGIN"), (0.001, "COMMIT"), (0.001, "SET search_path = orders"))]
    gates = [
        {"statement": "min(created_at) AS since", "parent": None, "utility": 2, "utility_else": 0},
        {"statement": "UPDATE outbox SET published_at", "parent": "min(created_at) AS since",
         "utility": 1, "utility_else": 1},
        {"statement": "INSERT INTO inbox", "parent": None, "utility": 2, "utility_else": 0},
        {"statement": "min(created_at) AS since", "parent": None, "utility": 2, "utility_else": 0},
        {"statement": "UPDATE outbox SET published_at", "parent": "min(created_at) AS since",
         "utility": 1, "utility_else": 1}]
    counted = bench_limit.script_statements(sent, gates, "bench_pipeline")
    # queries 1 + 1 + 1 + 1.04 + 0.92 + 0.92; BEGIN and SET LOCAL per pass (2.08), COMMIT
    # or ROLLBACK per pass (1.04), the consumer's BEGIN and COMMIT (2)
    assert counted == pytest.approx(5.88 + 2.08 + 1.04 + 2.0)
    services = services_post(orders_passes=0.72, orders_found=0.61, billing_passes=0.32, billing_found=0.31)
    assert bench_limit.statements_per_request(services) == pytest.approx(counted, rel=0.01)


def test_the_check_fails_a_script_that_sends_other_work_than_the_services():
    services = services_post()
    gates = [{"statement": "x", "parent": None, "utility": 0, "utility_else": 0}]
    same = [{"database": "bench_pipeline", "per_request": bench_limit.statements_per_request(services) * 1.05,
             "query": "SELECT 1"}]
    bench_limit.check("post", 1, services, same, gates, "bench_pipeline")
    # The old script: a full relay pass per request where the services' relays batch.
    heavier = [dict(same[0], per_request=17.0)]
    with pytest.raises(BenchError, match="more than 10% apart"):
        bench_limit.check("post", 4, services, heavier, gates, "bench_pipeline")
