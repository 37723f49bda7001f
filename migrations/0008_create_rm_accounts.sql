-- Read model (query-svc): one snapshot per account, the newest version seen in an event. A
-- snapshot is replaced only by a newer version, so redelivered and reordered events are harmless.
CREATE TABLE IF NOT EXISTS rm_accounts (
    user_id             VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    currency            CHAR(3) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance_micros      BIGINT NOT NULL,
    period              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    free_granted_micros BIGINT NOT NULL,
    free_used_micros    BIGINT NOT NULL,
    monthly_free_micros BIGINT NOT NULL,
    version             BIGINT NOT NULL,
    updated_at          DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
