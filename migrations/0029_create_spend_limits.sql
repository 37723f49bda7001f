-- Spend limits (invariant 9): a user's limits, each with the counter of its current window, in
-- one row locked with the account (after it, in primary-key order) by every charge of an account
-- whose spend_limited flag is set. scope is `account`, `api:<api_id>` or `key:<key_id>`;
-- window_kind `day` or `month` of the billing time zone; window_first_day the local date the
-- counter's window starts on; spent_micros what the scope spent in it (charges decided in it and
-- what the reservations taken in it hold); reached_published whether spend_limit_reached was
-- published for that window. A lowered limit may sit below what was already spent.
CREATE TABLE IF NOT EXISTS spend_limits (
    user_id           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    scope             VARCHAR(132) NOT NULL,
    window_kind       VARCHAR(5) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    limit_micros      BIGINT NOT NULL,
    window_first_day  DATE NOT NULL,
    spent_micros      BIGINT NOT NULL,
    reached_published BOOLEAN NOT NULL,
    updated_at        DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, scope, window_kind),
    CONSTRAINT spend_limits_in_range
      CHECK (limit_micros BETWEEN 0 AND 1000000000000000 AND spent_micros >= 0
             AND window_kind IN ('day', 'month'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- set_id makes a set idempotent: content_sha256 is the digest of the limits it asked for.
CREATE TABLE IF NOT EXISTS spend_limit_sets (
    user_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    set_id         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    content_sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, set_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- A key column compared byte for byte (invariant 10), created so (no table rebuild after).
SET @key_type = IF(VERSION() LIKE '%MariaDB%',
  'VARCHAR(64) CHARACTER SET ascii COLLATE ascii_nopad_bin NULL',
  'VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin NULL');
-- accounts.spend_limited: whether the account has limits (read with the account's lock, so an
-- account without any pays nothing more). key_id: the caller's API key of a charge or a hold.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND column_name = 'spend_limited');
SET @ddl = IF(@missing,
  'ALTER TABLE accounts ADD COLUMN spend_limited BOOLEAN NOT NULL DEFAULT FALSE',
  'DO 0');
PREPARE add_column FROM @ddl;
EXECUTE add_column;
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'ledger'
                  AND column_name = 'key_id');
SET @ddl = IF(@missing,
  CONCAT('ALTER TABLE ledger ADD COLUMN key_id ', @key_type),
  'DO 0');
PREPARE add_column FROM @ddl;
EXECUTE add_column;
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'reservations'
                  AND column_name = 'key_id');
SET @ddl = IF(@missing,
  CONCAT('ALTER TABLE reservations ADD COLUMN key_id ', @key_type),
  'DO 0');
PREPARE add_column FROM @ddl;
EXECUTE add_column;
DEALLOCATE PREPARE add_column;

-- Keys are compared byte for byte (invariant 10).
SET @nopad_charset = IF(VERSION() LIKE '%MariaDB%', NULL, 'utf8mb4');
SET @nopad_suffix = IF(VERSION() LIKE '%MariaDB%', '_nopad_bin', '_0900_bin');
PREPARE build_ddl FROM
 'SELECT CONCAT(''ALTER TABLE `'', ?, ''` DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4'',
          @nopad_suffix, COALESCE(CONCAT('', '', GROUP_CONCAT(CONCAT(
            ''MODIFY `'', COLUMN_NAME, ''` '', COLUMN_TYPE,
            '' CHARACTER SET '', COALESCE(@nopad_charset, CHARACTER_SET_NAME),
            '' COLLATE '', COALESCE(@nopad_charset, CHARACTER_SET_NAME), @nopad_suffix,
            IF(IS_NULLABLE = ''NO'', '' NOT NULL'', '' NULL''))
          ORDER BY ORDINAL_POSITION SEPARATOR '', '')), ''''))
  INTO @ddl
  FROM information_schema.COLUMNS
  WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?
    AND COLLATION_NAME IN (''ascii_bin'', ''utf8mb4_bin'')';
SET @t = 'spend_limits';     EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'spend_limit_sets'; EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
DEALLOCATE PREPARE nopad;
DEALLOCATE PREPARE build_ddl;
