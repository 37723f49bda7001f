-- One row per account, created by its first mutating command. It holds the balance and the free
-- quota of the account's current period (the latest period it was granted; it only moves forward).
-- The CHECK constraints repeat invariant 1 so that even a faulty write cannot store a negative
-- balance or more free quota used than granted.
CREATE TABLE IF NOT EXISTS accounts (
    user_id             VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    currency            CHAR(3) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance_micros      BIGINT NOT NULL,
    period              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    free_granted_micros BIGINT NOT NULL,
    free_used_micros    BIGINT NOT NULL,
    monthly_free_micros BIGINT NOT NULL,
    version             BIGINT NOT NULL,
    created_at          DATETIME(6) NOT NULL,
    updated_at          DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id),
    CONSTRAINT accounts_balance_in_range CHECK (balance_micros BETWEEN 0 AND 1000000000000000),
    CONSTRAINT accounts_free_used_in_range CHECK (free_used_micros BETWEEN 0 AND free_granted_micros),
    CONSTRAINT accounts_version_positive CHECK (version >= 1)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
