-- The free quota granted to an account for one period. The primary key makes a grant happen at
-- most once per account and period, whether it comes from the monthly reset or from the first
-- mutating command of the period.
CREATE TABLE IF NOT EXISTS free_quota_grants (
    user_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    period         CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    granted_micros BIGINT NOT NULL,
    record_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, period)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
