-- Keys are compared byte for byte (invariant 10). The `_bin` collations the tables were created
-- with are PAD SPACE: to them `k` and `k ` are one key, so a request id with a trailing space
-- collided with the charge before it, and a payment's `T ` replayed `T`. Every text column of
-- every table moves to a NO PAD binary collation: MariaDB's `<charset>_nopad_bin`, or MySQL's
-- `utf8mb4_0900_bin` (MySQL has no NO PAD collation for ascii). Each table's ALTER is built from
-- information_schema and touches only the columns still PAD SPACE (and the table's default, so a
-- column added later without a collation is NO PAD too), so the migration can run again (a database made from docs/sql/billing_service.sql runs it twice) and changes nothing
-- the second time.
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
SET @t = 'accounts';           EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'free_quota_grants';  EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'ledger';             EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'recharge_orders';    EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'unmatched_payments'; EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'outbox';             EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'command_progress';   EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'rm_accounts';        EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'rm_records';         EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'rm_daily_usage';     EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'rm_orders';          EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'command_shards';     EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'outbox_durability';  EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'refunds';            EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'alert_settings';     EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'alert_deliveries';   EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'reservations';       EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
DEALLOCATE PREPARE nopad;
DEALLOCATE PREPARE build_ddl;
