-- The transactional outbox: every committed change's event, written in the same transaction.
-- The relay publishes rows whose published_at is NULL and purges published ones after retention.
CREATE TABLE IF NOT EXISTS outbox (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id     CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    subject      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    payload      MEDIUMBLOB NOT NULL,
    traceparent  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at   DATETIME(6) NOT NULL,
    published_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY outbox_event_id (event_id),
    KEY outbox_unpublished (published_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
