-- Reservations (ReserveQuota): an amount held on an account for a call priced afterwards, free
-- quota first, then balance. One per (user_id, request_id), the charges' key space: the hold's
-- ledger row carries the request_id under the ledger's unique key, so a charge and a
-- reservation can never share one. status: held -> settled | released | expired.
-- hold_record_id / end_record_id: the ledger rows of the hold and of its end (the settle's
-- charge, or the release). period: the month whose free quota the hold took.
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id             VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    request_id          VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    api_id              VARCHAR(128) NOT NULL,
    amount_micros       BIGINT NOT NULL,
    free_held_micros    BIGINT NOT NULL,
    balance_held_micros BIGINT NOT NULL,
    period              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status              VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    hold_record_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    end_record_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    actual_micros       BIGINT NULL,
    created_at          DATETIME(6) NOT NULL,
    expires_at          DATETIME(6) NOT NULL,
    ended_at            DATETIME(6) NULL,
    PRIMARY KEY (reservation_id),
    UNIQUE KEY reservations_user_request (user_id, request_id),
    KEY reservations_expiring (status, expires_at),
    CONSTRAINT reservations_parts_add_up CHECK (amount_micros = free_held_micros + balance_held_micros)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
