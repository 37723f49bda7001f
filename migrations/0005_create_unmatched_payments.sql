-- Payments that arrived but could not be applied (invariant 7): stored for operators, never
-- refused. why: unknown_order | amount_mismatch | already_paid | balance_limit | failure_after_paid.
-- One row per provider transaction and outcome flag, so a repeated notification is a replay.
CREATE TABLE IF NOT EXISTS unmatched_payments (
    unmatched_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    order_no           VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id            VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    provider_txn_id    VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    success            BOOLEAN NOT NULL,
    paid_amount_micros BIGINT NOT NULL,
    why                VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at         DATETIME(6) NOT NULL,
    PRIMARY KEY (unmatched_id),
    UNIQUE KEY unmatched_payments_txn (provider_txn_id, success)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
