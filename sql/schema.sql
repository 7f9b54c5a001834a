-- drainer's schema, in steps. At every start drainer looks each step's object
-- up in the catalog and runs only the steps whose object is missing, so an
-- up-to-date database takes no lock at all (a reader holding a table never
-- holds up a start). A step that must run does so under an advisory lock
-- (instances starting at once take turns) and a lock_timeout of
-- DB_CONNECT_TIMEOUT_MS: past it start-up stops with one line instead of
-- waiting. Each step starts with a line `-- step: <kind> <object>`, kind being
-- table, column (table.column) or index.
-- ServerInstance and DrainEvent are unquoted on purpose: PostgreSQL stores
-- them as serverinstance and drainevent.

-- step: table jobs
CREATE TABLE IF NOT EXISTS jobs (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- step: table serverinstance
CREATE TABLE IF NOT EXISTS ServerInstance (
    id               SERIAL PRIMARY KEY,
    host             TEXT NOT NULL,
    port             INT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','draining','stopped')),
    inflight_count   INT NOT NULL DEFAULT 0,
    drain_started_at TIMESTAMPTZ,
    drained_at       TIMESTAMPTZ,
    last_seen_at     TIMESTAMPTZ,
    UNIQUE (host, port)
);

-- step: table drainevent
CREATE TABLE IF NOT EXISTS DrainEvent (
    id          SERIAL PRIMARY KEY,
    instance_id INT REFERENCES ServerInstance(id),
    event_type  TEXT NOT NULL,
    timestamp   TIMESTAMPTZ NOT NULL DEFAULT now(),
    details     JSONB
);

-- step: index idx_drain_instance
CREATE INDEX IF NOT EXISTS idx_drain_instance ON DrainEvent (instance_id, timestamp);

-- The heartbeat (HEARTBEAT_MS): when the instance was last known alive.
-- Databases made before it existed get the column here.
-- step: column serverinstance.last_seen_at
ALTER TABLE ServerInstance ADD COLUMN IF NOT EXISTS last_seen_at TIMESTAMPTZ;

-- The outbox: each job's event, written in the job's own statement when
-- REDIS_URL is set; the lease holder's relay publishes it to the Redis stream
-- drainer:jobs and deletes it once Redis has acknowledged it. (job_id has no
-- index of its own: each job writes its row once, and an index would cost
-- every insert; databases made with an earlier UNIQUE keep it, harmlessly.)
-- step: table outbox
CREATE TABLE IF NOT EXISTS outbox (
    seq        bigserial PRIMARY KEY,
    job_id     uuid NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL
);
