-- Replays: GitHub's delivery id is not signed, so a captured delivery re-sent under a new id
-- would be a second row. The sha256 of what the signature covers is unique per provider too
-- (NULL for rows stored before this column: NULLs never conflict).
ALTER TABLE webhook_events ADD COLUMN content_sha256 bytea
    CHECK (content_sha256 IS NULL OR length(content_sha256) = 32);
CREATE UNIQUE INDEX webhook_events_content ON webhook_events (provider, content_sha256);
