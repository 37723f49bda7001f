-- One row per alert event delivered (or being delivered) to a developer's webhook: the attempts
-- made, the last answer, and how it ended. status: pending | delivered | failed | no_webhook.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    event_id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind             VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    url              VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NULL,
    status           VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    attempts         INT NOT NULL,
    last_http_status INT NULL,
    last_error       VARCHAR(512) NULL,
    first_attempt_at DATETIME(6) NOT NULL,
    last_attempt_at  DATETIME(6) NOT NULL,
    delivered_at     DATETIME(6) NULL,
    PRIMARY KEY (event_id),
    KEY alert_deliveries_user (user_id, first_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
