"""The same-SQL limit's pgbench scripts, built for each load run from what the services sent
PostgreSQL in it (pg_stat_statements), and the check that the two sent alike.

A template in ci/bench_sql (post.sql, command.sql) holds every statement a request can
cause, statement for statement as the services send it. Its blocks

    -- @each <database> <text>      statements
    -- @else                        statements (optional)
    -- @end

run as often per request as the services sent the statements whose normalised text
contains <text> in <database>: a relay that passes over its outbox 0.72 times per request
and finds something 0.61 times makes the script pass 0.72 times and read and mark 0.61
times, each pass taking whatever waits, so its batches grow as the services' do. A block
inside another runs as often per run of the outer one. `-- @include <name> <database>`
inserts ci/bench_sql/<name>.sql with <database> for `<database>`.
"""

import os
import re

from bench_common import BenchError

SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_sql")
MARK = re.compile(r"^-- @(each|else|end|include)\b\s*(.*)$")
# pgbench's random() draws of one in a million: a frequency's resolution.
SCALE = 1_000_000
UTILITY = re.compile(r"^(BEGIN|COMMIT|ROLLBACK|SET LOCAL)\b")
# How far the statements per request may differ between the script and the services.
TOLERANCE = 0.10


def expand(path):
    """The template's lines, with its includes inserted."""
    with open(path) as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        mark = MARK.match(line)
        if mark and mark.group(1) == "include":
            name, database = mark.group(2).split()
            out += [part.replace("<database>", database) for part in expand(os.path.join(SQL, f"{name}.sql"))]
        else:
            out.append(line)
    return out


def frequency(sent, database, text):
    """Calls per request of the statements in `database` whose text contains `text`."""
    return sum(s["per_request"] for s in sent if s["database"] == database and text in s["query"])


def utility(line):
    """Whether a script line is a transaction statement: pg_stat_statements counts those of
    pgbench's prepared mode once per connection, not per run (see `script_statements`)."""
    return UTILITY.match(line) is not None


def build(template, sent, script):
    """Writes the pgbench script of `template` for the mix `sent` (StatementProfile's
    per_request) to `script`; returns its blocks: each one's statement text, frequency per
    request, and the transaction statements it sends when it runs and when its @else does."""
    out, gates, stack = [], [], [{"per_request": 1.0, "statement": None}]
    for number, line in enumerate(expand(template), 1):
        mark = MARK.match(line)
        if not mark:
            out.append(line)
            if utility(line):
                top = stack[-1]
                if top["statement"] is None:
                    raise BenchError(f"{template}:{number}: a transaction statement outside any @each")
                top["utility_else" if top.get("in_else") else "utility"] += 1
            continue
        kind, argument = mark.groups()
        if kind == "each":
            database, text = argument.split(None, 1)
            per_request = frequency(sent, database, text)
            # Per run of the enclosing block; never more than every run.
            parent = stack[-1]["per_request"]
            chance = min(1.0, per_request / parent) if parent > 0 else 0.0
            gate = f"gate{len(gates)}"
            out += [f"\\set {gate} random(1, {SCALE})", f"\\if :{gate} <= {round(chance * SCALE)}"]
            block = {"database": database, "statement": text, "per_request": per_request,
                     "parent": stack[-1]["statement"], "utility": 0, "utility_else": 0}
            gates.append(block)
            stack.append(block)
        elif kind == "else":
            out.append("\\else")
            stack[-1]["in_else"] = True
        else:
            if len(stack) == 1:
                raise BenchError(f"{template}:{number}: @end without @each")
            out.append("\\endif")
            stack.pop().pop("in_else", None)
    if len(stack) != 1:
        raise BenchError(f"{template}: an @each is not closed by @end")
    with open(script, "w") as f:
        f.write("\n".join(out) + "\n")
    return gates


def statements_per_request(sent):
    """What a request sent in all, but for the script's own `SET search_path` (the services
    each have a database of their own)."""
    return sum(s["per_request"] for s in sent if not s["query"].startswith("SET search_path"))


def script_statements(sent, gates, database):
    """What the script sent per transaction. pg_stat_statements counts a statement of
    pgbench's prepared mode each time it runs, but a transaction statement (BEGIN, SET
    LOCAL, COMMIT, ROLLBACK) only once per connection: those are counted from the runs of
    the blocks they are in, each block's runs being those of its own statement."""
    queries = sum(s["per_request"] for s in sent
                  if not s["query"].startswith("SET search_path") and not utility(s["query"]))
    runs = {text: frequency(sent, database, text) for text in {g["statement"] for g in gates}}
    by_text = {}
    for gate in gates:
        # Blocks with the same statement (the relay of each service) are counted together:
        # pg_stat_statements lists them under one text. They must send alike.
        shape = (gate["parent"], gate["utility"], gate["utility_else"])
        if by_text.setdefault(gate["statement"], shape) != shape:
            raise BenchError(f"blocks of `{gate['statement']}` differ in their transaction statements")
    transactions = 0.0
    for text, (parent, inside, otherwise) in by_text.items():
        transactions += runs[text] * inside
        if otherwise:
            transactions += (runs[parent] - runs[text]) * otherwise
    return queries + transactions


def check(name, concurrency, services, limit, gates, database):
    """Fails the benchmark when the script sent PostgreSQL more or less than the services
    did per request, by more than TOLERANCE: the limit would measure other work."""
    ours, theirs = statements_per_request(services), script_statements(limit, gates, database)
    if ours == 0 or abs(theirs - ours) / ours > TOLERANCE:
        raise BenchError(
            f"{name} at concurrency {concurrency}: the same-SQL script sent {theirs:.2f} statements per "
            f"transaction, the services {ours:.2f} per request (more than {TOLERANCE:.0%} apart); "
            f"see ci/bench_sql/{name}.sql and the statements the services sent:\n"
            + "\n".join(f"  {s['database']} {s['per_request']:.2f} {s['query'][:100]}" for s in services[:20]))
    return ours, theirs
