-- Refunds of charges, partial or whole: one row per refund, beside its `refund` ledger row
-- (record_id). Its unique key makes a refund apply once per (user_id, refund_id); the charge's
-- refunds, summed part by part, never exceed the charge's parts. balance_micros went back to the
-- balance, free_micros back to the free quota of the charge's period, free_forfeited_micros was
-- the free part of a charge whose period had ended (not returned).
CREATE TABLE IF NOT EXISTS refunds (
    record_id             CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id               VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    refund_id             VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    charge_record_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros         BIGINT NOT NULL,
    balance_micros        BIGINT NOT NULL,
    free_micros           BIGINT NOT NULL,
    free_forfeited_micros BIGINT NOT NULL,
    reason                VARCHAR(512) NOT NULL,
    created_at            DATETIME(6) NOT NULL,
    PRIMARY KEY (record_id),
    UNIQUE KEY refunds_user_refund (user_id, refund_id),
    KEY refunds_charge (charge_record_id),
    CONSTRAINT refunds_parts_add_up CHECK (amount_micros = balance_micros + free_micros + free_forfeited_micros),
    CONSTRAINT refunds_parts_not_negative CHECK (balance_micros >= 0 AND free_micros >= 0 AND free_forfeited_micros >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
