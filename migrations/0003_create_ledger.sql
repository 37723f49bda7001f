-- The append-only ledger: one row per change of an account's state, with the split and the state
-- before and after, so each row's state-before equals the previous row's state-after (a chain).
-- kind: deduct | recharge | free_grant | adjust. amount_micros is a magnitude except for adjust
-- (signed: + credit, - debit). free_micros / balance_micros: the free and balance parts of a
-- deduct, the granted amount of a free_grant, the balance change of a recharge or adjust.
-- The unique keys carry the idempotency rules: one charge per (user_id, request_id), one
-- adjustment per (user_id, adjustment_id), one credit per provider transaction.
CREATE TABLE IF NOT EXISTS ledger (
    id                         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    record_id                  CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id                    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version                    BIGINT NOT NULL,
    kind                       VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros              BIGINT NOT NULL,
    free_micros                BIGINT NOT NULL,
    balance_micros             BIGINT NOT NULL,
    period                     CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    period_before              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance_before_micros      BIGINT NOT NULL,
    balance_after_micros       BIGINT NOT NULL,
    free_granted_before_micros BIGINT NOT NULL,
    free_granted_after_micros  BIGINT NOT NULL,
    free_used_before_micros    BIGINT NOT NULL,
    free_used_after_micros     BIGINT NOT NULL,
    request_id                 VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    api_id                     VARCHAR(128) NULL,
    description                VARCHAR(512) NULL,
    order_no                   VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    provider_txn_id            VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    adjustment_id              VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    reason                     VARCHAR(512) NULL,
    actor                      VARCHAR(64) NULL,
    created_at                 DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY ledger_record_id (record_id),
    UNIQUE KEY ledger_user_version (user_id, version),
    UNIQUE KEY ledger_user_request (user_id, request_id),
    UNIQUE KEY ledger_user_adjustment (user_id, adjustment_id),
    UNIQUE KEY ledger_provider_txn (provider_txn_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
