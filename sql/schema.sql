-- drainer's schema. Applied at every start, under an advisory lock, so it is
-- idempotent and safe when several instances start against one database.
-- ServerInstance and DrainEvent are unquoted on purpose: PostgreSQL stores
-- them as serverinstance and drainevent.

SET LOCAL client_min_messages = warning;

CREATE TABLE IF NOT EXISTS jobs (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ServerInstance (
    id               SERIAL PRIMARY KEY,
    host             TEXT NOT NULL,
    port             INT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active','draining','stopped')),
    inflight_count   INT NOT NULL DEFAULT 0,
    drain_started_at TIMESTAMPTZ,
    drained_at       TIMESTAMPTZ,
    UNIQUE (host, port)
);

CREATE TABLE IF NOT EXISTS DrainEvent (
    id          SERIAL PRIMARY KEY,
    instance_id INT REFERENCES ServerInstance(id),
    event_type  TEXT NOT NULL,
    timestamp   TIMESTAMPTZ NOT NULL DEFAULT now(),
    details     JSONB
);

CREATE INDEX IF NOT EXISTS idx_drain_instance ON DrainEvent (instance_id, timestamp);

-- The heartbeat (HEARTBEAT_MS): when the instance was last known alive.
ALTER TABLE ServerInstance ADD COLUMN IF NOT EXISTS last_seen_at TIMESTAMPTZ;
