-- Consumers look deliveries up by event type and time.
CREATE INDEX webhook_events_event_received ON webhook_events (event, received_at);
