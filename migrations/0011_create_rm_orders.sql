-- Read model (query-svc): recharge orders as their owners see them. status_rank orders the
-- statuses (PENDING 0 < FAILED 1 < PAID 2) so an event applied late never moves an order back.
CREATE TABLE IF NOT EXISTS rm_orders (
    order_no        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros   BIGINT NOT NULL,
    channel         VARCHAR(32) NOT NULL,
    status          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status_rank     TINYINT NOT NULL,
    provider_txn_id VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at      DATETIME(6) NOT NULL,
    expires_at      DATETIME(6) NOT NULL,
    paid_at         DATETIME(6) NULL,
    PRIMARY KEY (order_no),
    KEY rm_orders_user_created (user_id, created_at, order_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
