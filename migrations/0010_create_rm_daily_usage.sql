-- Read model (query-svc): charges per user, day (in the billing time zone) and API. Moved in the
-- transaction that inserts the charge's record, and only when that insert happened, so a
-- redelivered event never counts twice.
CREATE TABLE IF NOT EXISTS rm_daily_usage (
    user_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    day            DATE NOT NULL,
    api_id         VARCHAR(128) NOT NULL,
    calls          BIGINT NOT NULL,
    amount_micros  BIGINT NOT NULL,
    free_micros    BIGINT NOT NULL,
    balance_micros BIGINT NOT NULL,
    PRIMARY KEY (user_id, day, api_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
