-- A long command's walk split into ranges of accounts that are carried out side by side: shard n
-- covers user ids after the previous shard's end up to its own end (NULL: no end). Each keeps its
-- own cursor, so a crash resumes every range where it stopped.
CREATE TABLE IF NOT EXISTS command_shards (
    command_id       VARCHAR(160) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    shard            INT NOT NULL,
    cursor_user_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    end_user_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    accounts_granted BIGINT NOT NULL,
    finished_at      DATETIME(6) NULL,
    PRIMARY KEY (command_id, shard)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
