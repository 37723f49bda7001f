-- One row the outbox relay writes (and waits for) after it has read the rows it will publish and
-- before it publishes them: InnoDB shows a commit to other sessions before its redo log is on
-- disk, and this later commit's flush covers every commit the relay saw, so an event is never
-- published for a change a database crash could still lose.
CREATE TABLE IF NOT EXISTS outbox_durability (
    id         TINYINT NOT NULL,
    written_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
