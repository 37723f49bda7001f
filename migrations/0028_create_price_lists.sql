-- Price lists (prices owned by billing; the gateway reports usage). A list has a name and
-- versions 1, 2, 3 ...; a version is immutable and replaces the whole list from effective_from
-- on. price_lists.latest_version is locked to number the next version. publish_id makes a
-- publication idempotent: content_sha256 is the digest of what it asked for (name, requested
-- instant, prices), so a retry with other content is told apart.
CREATE TABLE IF NOT EXISTS price_lists (
    name           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    latest_version BIGINT NOT NULL,
    created_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS price_list_versions (
    name           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version        BIGINT NOT NULL,
    effective_from DATETIME(6) NOT NULL,
    published_at   DATETIME(6) NOT NULL,
    actor          VARCHAR(64) NOT NULL,
    publish_id     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    content_sha256 CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE KEY price_list_versions_publish (publish_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- price_micros for every per_units units of meter used by a call of api_id.
CREATE TABLE IF NOT EXISTS price_list_prices (
    name         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version      BIGINT NOT NULL,
    api_id       VARCHAR(128) NOT NULL,
    meter        VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    price_micros BIGINT NOT NULL,
    per_units    BIGINT NOT NULL,
    PRIMARY KEY (name, version, api_id, meter),
    CONSTRAINT price_list_prices_in_range
      CHECK (price_micros BETWEEN 0 AND 1000000000000 AND per_units BETWEEN 1 AND 1000000000)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The list that prices an account's usage (NULL: the configured default list), and what priced a charge
-- or a hold: usage_units the usage as a JSON object of meter to quantity in meter order (NULL for
-- an amount), price_list and price_version the version that priced it. Added only where missing.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND column_name = 'price_list');
SET @ddl = IF(@missing,
  'ALTER TABLE accounts ADD COLUMN price_list VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL',
  'DO 0');
PREPARE add_price_list FROM @ddl;
EXECUTE add_price_list;
SET @priced_columns = 'ADD COLUMN usage_units VARCHAR(4096) CHARACTER SET ascii COLLATE ascii_bin NULL,
     ADD COLUMN price_list VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
     ADD COLUMN price_version BIGINT NULL';
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'ledger'
                  AND column_name = 'usage_units');
SET @ddl = IF(@missing, CONCAT('ALTER TABLE ledger ', @priced_columns), 'DO 0');
PREPARE add_price_list FROM @ddl;
EXECUTE add_price_list;
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'reservations'
                  AND column_name = 'usage_units');
SET @ddl = IF(@missing, CONCAT('ALTER TABLE reservations ', @priced_columns), 'DO 0');
PREPARE add_price_list FROM @ddl;
EXECUTE add_price_list;
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'rm_records'
                  AND column_name = 'usage_units');
SET @ddl = IF(@missing, CONCAT('ALTER TABLE rm_records ', @priced_columns), 'DO 0');
PREPARE add_price_list FROM @ddl;
EXECUTE add_price_list;
-- Read model: the units the priced calls of a user's API used on a day, a JSON object of meter to
-- quantity (NULL: none priced), summed in the same upsert as the day's calls and amounts.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'rm_daily_usage'
                  AND column_name = 'units');
SET @ddl = IF(@missing, 'ALTER TABLE rm_daily_usage ADD COLUMN units TEXT NULL', 'DO 0');
PREPARE add_price_list FROM @ddl;
EXECUTE add_price_list;
DEALLOCATE PREPARE add_price_list;

-- Keys are compared byte for byte (invariant 10): the new tables and columns move to the NO PAD
-- binary collations, as 0022_keys_byte_for_byte.sql moved the others.
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
SET @t = 'price_lists';         EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'price_list_versions'; EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'price_list_prices';   EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'rm_daily_usage';      EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'accounts';            EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'ledger';              EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'reservations';        EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
SET @t = 'rm_records';          EXECUTE build_ddl USING @t, @t; PREPARE nopad FROM @ddl; EXECUTE nopad;
DEALLOCATE PREPARE nopad;
DEALLOCATE PREPARE build_ddl;
