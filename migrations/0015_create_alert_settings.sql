-- A developer's alert settings. low_balance_threshold_micros: balance_low fires when the balance
-- falls to or below it (NULL: the configured default). webhook_url: where alerts are delivered
-- (NULL: nowhere). Read with the account's row, under its lock, by every change that may cross.
CREATE TABLE IF NOT EXISTS alert_settings (
    user_id                      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    low_balance_threshold_micros BIGINT NULL,
    webhook_url                  VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NULL,
    updated_at                   DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id),
    CONSTRAINT alert_settings_threshold_in_range CHECK (low_balance_threshold_micros BETWEEN 0 AND 1000000000000000)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
