-- Progress of long-running commands (the monthly reset): a cursor over accounts in primary-key
-- order, persisted per command so that a crash resumes where it stopped.
CREATE TABLE IF NOT EXISTS command_progress (
    command_id       VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind             VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    period           CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    cursor_user_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    accounts_granted BIGINT NOT NULL,
    started_at       DATETIME(6) NOT NULL,
    updated_at       DATETIME(6) NOT NULL,
    finished_at      DATETIME(6) NULL,
    PRIMARY KEY (command_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
