-- Recharge orders. status: PENDING | PAID | FAILED (EXPIRED is a PENDING order past expires_at,
-- computed when read). provider_txn_id is the transaction that last decided the status.
CREATE TABLE IF NOT EXISTS recharge_orders (
    order_no        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros   BIGINT NOT NULL,
    channel         VARCHAR(32) NOT NULL,
    status          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idempotency_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    provider_txn_id VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at      DATETIME(6) NOT NULL,
    expires_at      DATETIME(6) NOT NULL,
    paid_at         DATETIME(6) NULL,
    updated_at      DATETIME(6) NOT NULL,
    PRIMARY KEY (order_no),
    UNIQUE KEY recharge_orders_user_key (user_id, idempotency_key),
    KEY recharge_orders_user_created (user_id, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
