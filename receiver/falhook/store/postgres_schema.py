"""PostgreSQL schema, its migrations, and the queries that turn rows into views.

Kept apart from postgres.py (pool, LISTEN, errors) so the SQL reads on its own. Every table
lives in one schema (``falhook`` unless told otherwise), reached through the connection's
search_path, so one database can hold several falhook installations (and every test its own).
Times are timestamptz; JSON columns are `json` (kept as written, key order included).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import asyncpg

from falhook.config import PG_SCHEMA_NAME
from falhook.store.dialect import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    POSTGRES,
    SUBMISSION_COLUMNS,
    attempt_view,
    delivery_view,
    event_view,
    submission_view,
)
from falhook.store.models import LEASE_EXPIRED, AttemptView, DeliveryView, EventView, SubmissionView

# A schema name we can put in search_path and a NOTIFY channel without quoting games; short
# enough that the channel name stays under PostgreSQL's 63-byte identifier limit.
SCHEMA_NAME = PG_SCHEMA_NAME

# Ordered and append only: a database at version N gets MIGRATIONS[N:], each in the one
# transaction that holds the advisory lock. Never edit one that has shipped.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE events (
            request_id text PRIMARY KEY,
            route text NOT NULL,
            fal_status text NOT NULL,
            error text,
            payload_error text,
            gateway_request_id text,
            received_at timestamptz NOT NULL,
            headers json NOT NULL,
            body bytea NOT NULL,
            files json NOT NULL,
            source text NOT NULL DEFAULT 'webhook'
        )""",
        "CREATE INDEX events_by_time ON events (received_at DESC, request_id DESC)",
        "CREATE INDEX events_by_route ON events (route, received_at DESC, request_id DESC)",
        """CREATE TABLE deliveries (
            request_id text NOT NULL REFERENCES events (request_id),
            sink text NOT NULL,
            position integer NOT NULL,
            state text NOT NULL CHECK (state IN
                ('pending', 'delivering', 'retrying', 'delivered', 'dead')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            last_error text,
            lease_token text,
            lease_owner text,
            lease_expires_at timestamptz,
            output json,
            updated_at timestamptz NOT NULL,
            -- When the delivery is next due, whatever its state: lease() walks one index
            -- in due order instead of sorting every due row.
            due_at timestamptz GENERATED ALWAYS AS (CASE
                WHEN state IN ('pending', 'retrying') THEN next_attempt_at
                WHEN state = 'delivering' THEN lease_expires_at
            END) STORED,
            PRIMARY KEY (request_id, sink)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (due_at, request_id, position)"
        " WHERE due_at IS NOT NULL",
        "CREATE INDEX deliveries_by_token ON deliveries (lease_token)"
        " WHERE lease_token IS NOT NULL",
        "CREATE INDEX deliveries_by_state ON deliveries (state, request_id)",
        """CREATE TABLE submissions (
            request_id text PRIMARY KEY,
            endpoint text NOT NULL,
            route text NOT NULL,
            input json NOT NULL,
            status_url text,
            response_url text,
            cancel_url text,
            submitted_at timestamptz NOT NULL,
            state text NOT NULL DEFAULT 'pending',
            detail text,
            checked_at timestamptz
        )""",
        "CREATE INDEX submissions_by_time ON submissions (submitted_at DESC, request_id DESC)",
    ),
    (
        # A sink's filter can skip a delivery: a state of its own, done for the event.
        "ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check",
        "ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN"
        " ('pending', 'delivering', 'retrying', 'delivered', 'dead', 'skipped'))",
        # Every attempt of every delivery (and the decisions made without one: skipped by a
        # filter, a lease that expired): the console's history. Pruned by age.
        """CREATE TABLE attempts (
            request_id text NOT NULL,
            sink text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            outcome text NOT NULL,
            error text,
            duration_ms integer,
            FOREIGN KEY (request_id, sink) REFERENCES deliveries (request_id, sink)
        )""",
        "CREATE INDEX attempts_by_delivery ON attempts (request_id, sink, at)",
        "CREATE INDEX attempts_by_time ON attempts (at)",
        # The W3C traceparent of the span that received the event (tracing, when on).
        "ALTER TABLE events ADD COLUMN trace_context text",
    ),
    (
        # The console's search: a tsvector of each event's request id and body (payload,
        # fal's error; its first 64 KiB), set at insert by a trigger and indexed with GIN.
        # A body that is not UTF-8 text (or too large for a tsvector) is searchable by its
        # request id only, and never fails an insert.
        """CREATE FUNCTION events_search_text(rid text, body bytea) RETURNS tsvector
        LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            RETURN to_tsvector('simple'::regconfig,
                rid || ' ' || left(convert_from(body, 'UTF8'), 65536));
        EXCEPTION WHEN others THEN
            RETURN to_tsvector('simple'::regconfig, rid);
        END $$""",
        """CREATE FUNCTION events_search_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search := events_search_text(NEW.request_id, NEW.body);
            RETURN NEW;
        END $$""",
        "ALTER TABLE events ADD COLUMN search tsvector",
        "UPDATE events SET search = events_search_text(request_id, body)",
        "CREATE TRIGGER events_search BEFORE INSERT ON events"
        " FOR EACH ROW EXECUTE FUNCTION events_search_trigger()",
        "CREATE INDEX events_by_search ON events USING gin (search)",
        # The console's live view reads deliveries changed since a time.
        "CREATE INDEX deliveries_by_change ON deliveries (updated_at, request_id, sink)",
        # Searching delivery errors reads only the deliveries that have one.
        "CREATE INDEX deliveries_with_error ON deliveries (request_id)"
        " WHERE last_error IS NOT NULL",
    ),
    (
        # The user's own labels for a submitted job (`falhook submit --meta`), never sent to
        # fal: a JSON object of strings.
        "ALTER TABLE submissions ADD COLUMN metadata json NOT NULL DEFAULT '{}'",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)


def lock_key(schema: str) -> int:
    """The advisory lock (a signed bigint) that serialises migrations of one schema."""
    digest = hashlib.blake2b(f"falhook-migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Create the schema or bring it up to date; returns the version now applied.

    The transaction-scoped advisory lock makes processes starting at once take turns: the
    first applies, the others then find nothing left to do. It is released at commit or
    rollback, so a crashed migration cannot leave it held.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = await conn.fetchval(
            f'SELECT COALESCE(max(version), 0) FROM "{schema}".schema_migrations'
        )
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {version} is newer than this falhook "
                f"({SCHEMA_VERSION}): upgrade falhook"
            )
        # Tables are created unqualified, in the first schema of search_path: ours.
        await conn.execute(f'SET LOCAL search_path = "{schema}"')
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
    return SCHEMA_VERSION


# --- statements --------------------------------------------------------------------------------

# Many events in one statement (intake's group commit): one row of the arrays $1-$12 per
# event, and one row of $13-$15 per delivery. Request ids must be distinct within a call.
# The request ids stored come back; the others were there already.
ACCEPT_MANY = """
WITH new AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::timestamptz[], $8::text[], $9::bytea[], $10::text[],
                         $11::text[], $12::text[])
        AS n (request_id, route, fal_status, error, payload_error, gateway_request_id,
              received_at, headers, body, files, source, trace_context)
), ins AS (
    INSERT INTO events (request_id, route, fal_status, error, payload_error,
                        gateway_request_id, received_at, headers, body, files, source,
                        trace_context)
    SELECT request_id, route, fal_status, error, payload_error, gateway_request_id,
           received_at, headers::json, body, files::json, source, trace_context FROM new
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, received_at
), d AS (
    INSERT INTO deliveries (request_id, sink, position, state, next_attempt_at, updated_at)
    SELECT ins.request_id, s.sink, s.position, 'pending', least(ins.received_at, now()), now()
    FROM unnest($13::text[], $14::text[], $15::int[]) AS s (request_id, sink, position)
    JOIN ins ON ins.request_id = s.request_id
)
SELECT request_id FROM ins
"""

# Due deliveries in due order; rows another worker is leasing right now are skipped, not
# waited for, and the lock is re-checked against the newest row version, so a delivery is
# never handed to two workers.
LEASE_DUE = f"""
WITH due AS (
    SELECT request_id, sink, due_at, state FROM deliveries
    WHERE due_at <= now()
    ORDER BY due_at, request_id, position
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), expired AS (
    INSERT INTO attempts (request_id, sink, outcome, error)
    SELECT request_id, sink, 'expired', '{LEASE_EXPIRED}' FROM due WHERE state = 'delivering'
)
UPDATE deliveries d SET state = 'delivering', lease_token = gen_random_uuid()::text,
    lease_owner = $2, lease_expires_at = now() + $3 * interval '1 second', updated_at = now(),
    attempts = d.attempts + (d.state = 'delivering')::int,
    last_error = CASE WHEN d.state = 'delivering' THEN '{LEASE_EXPIRED}' ELSE d.last_error END
FROM due WHERE d.request_id = due.request_id AND d.sink = due.sink
RETURNING d.request_id, d.sink, d.attempts, d.lease_token, d.position, due.due_at AS due
"""

# One event's pending or retrying deliveries, due or not (serverless inline mode), and its
# expired leases; only those of the sinks in $5 unless it is NULL.
LEASE_ONE = f"""
WITH due AS (
    SELECT request_id, sink, due_at, state FROM deliveries
    WHERE request_id = $4 AND (state IN ('pending', 'retrying')
                               OR (state = 'delivering' AND lease_expires_at <= now()))
        AND ($5::text[] IS NULL OR sink = ANY($5::text[]))
    ORDER BY position
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), expired AS (
    INSERT INTO attempts (request_id, sink, outcome, error)
    SELECT request_id, sink, 'expired', '{LEASE_EXPIRED}' FROM due WHERE state = 'delivering'
)
UPDATE deliveries d SET state = 'delivering', lease_token = gen_random_uuid()::text,
    lease_owner = $2, lease_expires_at = now() + $3 * interval '1 second', updated_at = now(),
    attempts = d.attempts + (d.state = 'delivering')::int,
    last_error = CASE WHEN d.state = 'delivering' THEN '{LEASE_EXPIRED}' ELSE d.last_error END
FROM due WHERE d.request_id = due.request_id AND d.sink = due.sink
RETURNING d.request_id, d.sink, d.attempts, d.lease_token, d.position, due.due_at AS due
"""

EXTEND = """
UPDATE deliveries SET lease_expires_at = now() + $2 * interval '1 second'
WHERE lease_token = ANY($1::text[]) AND state = 'delivering'
"""

# A retry without a time is due now, never stuck with a NULL time. The attempt goes into
# the history in the same statement ($9: whether it does), only when the token held.
FINISH = """
WITH done AS (
    UPDATE deliveries SET state = $1, attempts = attempts + $8, last_error = $2,
        next_attempt_at = CASE WHEN $1 = 'retrying'
            THEN now() + COALESCE($3::float8, 0) * interval '1 second' END,
        output = COALESCE($4, output), lease_token = NULL, lease_owner = NULL,
        lease_expires_at = NULL, updated_at = now()
    WHERE request_id = $5 AND sink = $6 AND lease_token = $7 AND state = 'delivering'
    RETURNING request_id, sink
), logged AS (
    INSERT INTO attempts (request_id, sink, outcome, error, duration_ms)
    SELECT request_id, sink, $10, $11, $12 FROM done WHERE $9
)
SELECT count(*) FROM done
"""

# Many outcomes in one statement: one row of the arrays per result (each as in FINISH), and
# the file lists of their events ($13, $14). Each result's request id and sink come back
# when its token held.
FINISH_MANY = """
WITH f AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::float8[], $7::text[], $8::int[], $9::bool[], $10::text[],
                         $11::text[], $12::int[])
        AS f (request_id, sink, token, state, last_error, delay, output, counted, logs,
              outcome, error, duration_ms)
), done AS (
    UPDATE deliveries d SET state = f.state, attempts = d.attempts + f.counted,
        last_error = f.last_error,
        next_attempt_at = CASE WHEN f.state = 'retrying'
            THEN now() + COALESCE(f.delay, 0) * interval '1 second' END,
        output = COALESCE(f.output::json, d.output), lease_token = NULL, lease_owner = NULL,
        lease_expires_at = NULL, updated_at = now()
    FROM f
    WHERE d.request_id = f.request_id AND d.sink = f.sink AND d.lease_token = f.token
        AND d.state = 'delivering'
    RETURNING d.request_id, d.sink, f.logs, f.outcome, f.error, f.duration_ms
), logged AS (
    INSERT INTO attempts (request_id, sink, outcome, error, duration_ms)
    SELECT request_id, sink, outcome, error, duration_ms FROM done WHERE logs
), files AS (
    UPDATE events e SET files = u.files::json
    FROM unnest($13::text[], $14::text[]) AS u (request_id, files)
    WHERE e.request_id = u.request_id
)
SELECT request_id, sink FROM done
"""

RELEASE = """
UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'pending' END,
    next_attempt_at = now(), lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE request_id = $1 AND sink = $2 AND lease_token = $3 AND state = 'delivering'
"""


def replay_sql(*, one_sink: bool, force: bool, add: bool = False) -> str:
    """Deliveries of the events in $1 (an array) due again (only sink $2's when one_sink);
    the request id of each. `add`: sink $2's delivery is also created, pending, for events
    of the routes in $3 that lack it (one statement: the rows it adds are not the rows its
    update sees, so each is counted once)."""
    update = (
        "UPDATE deliveries SET state = 'pending', attempts = 0, last_error = NULL,"
        " next_attempt_at = now(), lease_token = NULL, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = now()"
        + (", output = NULL" if force else "")
        + " WHERE request_id = ANY($1::text[])"
        + (" AND sink = $2" if one_sink else "")
        + " RETURNING request_id"
    )
    if not add:
        return update
    return (
        "WITH added AS (INSERT INTO deliveries (request_id, sink, position, state,"
        " next_attempt_at, updated_at) SELECT e.request_id, $2, 1 + COALESCE((SELECT"
        " max(d.position) FROM deliveries d WHERE d.request_id = e.request_id), 0), 'pending',"
        " now(), now() FROM events e WHERE e.request_id = ANY($1::text[])"
        " AND e.route = ANY($3::text[]) ON CONFLICT (request_id, sink) DO NOTHING"
        f" RETURNING request_id), updated AS ({update})"
        " SELECT request_id FROM added UNION ALL SELECT request_id FROM updated"
    )


RECORD_SUBMISSION = """
INSERT INTO submissions (request_id, endpoint, route, input, status_url, response_url,
                         cancel_url, submitted_at, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (request_id) DO NOTHING
"""

# --- event state (the contract's rule, from falhook.store.states) ------------------------


def state_where(state: str, param: int) -> tuple[str, list[Any]]:
    """A WHERE clause on events `e` for an event state, or for events holding a delivery in a
    delivery state ("delivering", using placeholder $param); an unknown state matches
    nothing."""
    p = POSTGRES.params()
    p.values = [None] * (param - 1)  # the placeholders taken before this clause
    clause = POSTGRES.state_where(state, p)
    return clause, p.values[param - 1 :]


def as_utc(value: datetime) -> datetime:
    """A naive time is taken as UTC, never as the host's zone."""
    aware: datetime = POSTGRES.time_in(value)
    return aware


# --- rows to views -----------------------------------------------------------------------------


async def load_submissions(
    c: asyncpg.Connection,
    where: str,
    params: list[Any],
    limit: int,
    *,
    oldest_first: bool = False,
) -> list[SubmissionView]:
    order = "ASC" if oldest_first else "DESC"
    rows = await c.fetch(
        f"SELECT {SUBMISSION_COLUMNS}"
        " FROM submissions s LEFT JOIN events e ON e.request_id = s.request_id"
        f" WHERE {where} ORDER BY s.submitted_at {order}, s.request_id {order}"
        f" LIMIT ${len(params) + 1}",
        *params,
        limit,
    )
    return [submission_view(POSTGRES, r) for r in rows]


async def _histories(
    c: asyncpg.Connection, ids: list[str]
) -> dict[tuple[str, str], list[AttemptView]]:
    """Each delivery's attempts, oldest first, by (request id, sink)."""
    attempts: dict[tuple[str, str], list[AttemptView]] = {}
    for r in await c.fetch(
        f"SELECT request_id, sink, {ATTEMPT_COLUMNS} FROM attempts"
        " WHERE request_id = ANY($1::text[]) ORDER BY request_id, sink, at, ctid",
        ids,
    ):
        attempts.setdefault((r[0], r[1]), []).append(attempt_view(POSTGRES, r[2:]))
    return attempts


async def load_events(
    c: asyncpg.Connection, ids: list[str], *, history: bool = True
) -> list[EventView]:
    """Events (in the order of ids) with their deliveries and submission; each delivery's
    history of attempts too unless `history` is false (the worker never reads it). Call
    inside a transaction to read all the tables in one snapshot."""
    if not ids:
        return []
    attempts = await _histories(c, ids) if history else {}
    deliveries: dict[str, dict[str, DeliveryView]] = {rid: {} for rid in ids}
    for r in await c.fetch(
        f"SELECT request_id, {DELIVERY_COLUMNS} FROM deliveries"
        " WHERE request_id = ANY($1::text[]) ORDER BY request_id, position",
        ids,
    ):
        rid, sink = r[0], r[1]
        deliveries[rid][sink] = delivery_view(POSTGRES, r[1:], attempts.get((rid, sink), ()))
    subs = {
        s.request_id: s
        for s in await load_submissions(c, "s.request_id = ANY($1::text[])", [ids], len(ids))
    }
    events = {
        r[0]: event_view(POSTGRES, r, deliveries[r[0]], subs.get(r[0]))
        for r in await c.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE request_id = ANY($1::text[])", ids
        )
    }
    return [events[rid] for rid in ids if rid in events]
