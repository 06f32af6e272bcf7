-- Received webhook deliveries: one row per (provider, delivery id), in arrival order.
CREATE TABLE webhook_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    text        NOT NULL CHECK (provider IN ('github', 'gitlab', 'standard')),
    delivery_id text        NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 128),
    event       text        NOT NULL,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL,
    CONSTRAINT webhook_events_delivery UNIQUE (provider, delivery_id)
);

-- the receiver only appends; ON CONFLICT (provider, delivery_id) needs to read those two columns
GRANT INSERT ON webhook_events TO rave_webhook;
GRANT SELECT (provider, delivery_id) ON webhook_events TO rave_webhook;
