-- Read model (query-svc): the records a user sees, keyed by record id (inserted only if absent)
-- and ordered by the account version they produced. type: deduct | recharge | free_grant | adjust.
CREATE TABLE IF NOT EXISTS rm_records (
    record_id                   CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id                     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version                     BIGINT NOT NULL,
    type                        VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros               BIGINT NOT NULL,
    free_micros                 BIGINT NOT NULL,
    balance_micros              BIGINT NOT NULL,
    balance_after_micros        BIGINT NOT NULL,
    free_remaining_after_micros BIGINT NOT NULL,
    api_id                      VARCHAR(128) NULL,
    request_id                  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    order_no                    VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    period                      CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at                  DATETIME(6) NOT NULL,
    PRIMARY KEY (record_id),
    UNIQUE KEY rm_records_user_version (user_id, version),
    KEY rm_records_user_type_version (user_id, type, version),
    KEY rm_records_user_created (user_id, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
