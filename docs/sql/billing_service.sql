-- The billing service's schema as one script, for MySQL 8 / MariaDB 10.6 and later:
--
--     mysql -u root -p < docs/sql/billing_service.sql
--
-- It is the same schema as the migrations in migrations/ (a test applies both and compares the
-- tables, columns, indexes and constraints). The services apply the migrations themselves at
-- start (database.migrate_on_start); every statement here is idempotent, so a database created
-- with this script is also accepted by the migrations.
--
-- All instants are UTC (DATETIME(6)); amounts are BIGINT micros (1 CNY = 1000000).

CREATE DATABASE IF NOT EXISTS billing CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
USE billing;

-- 0001_create_accounts.sql
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
    KEY accounts_created_at (created_at),
    CONSTRAINT accounts_balance_in_range CHECK (balance_micros BETWEEN 0 AND 1000000000000000),
    CONSTRAINT accounts_free_used_in_range CHECK (free_used_micros BETWEEN 0 AND free_granted_micros),
    CONSTRAINT accounts_version_positive CHECK (version >= 1)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0002_create_free_quota_grants.sql
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

-- 0003_create_ledger.sql
-- The append-only ledger: one row per change of an account's state, with the split and the state
-- before and after, so each row's state-before equals the previous row's state-after (a chain).
-- kind: deduct | recharge | free_grant | adjust. amount_micros is a magnitude except for adjust
-- (signed: + credit, - debit). free_micros / balance_micros: the free and balance parts of a
-- deduct, the granted amount of a free_grant, the balance change of a recharge or adjust.
-- The unique keys carry the idempotency rules: one charge per (user_id, request_id), one
-- adjustment per (user_id, adjustment_id), one credit per provider transaction.
CREATE TABLE IF NOT EXISTS ledger (
    id                         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    record_id                  CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id                    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version                    BIGINT NOT NULL,
    kind                       VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros              BIGINT NOT NULL,
    free_micros                BIGINT NOT NULL,
    balance_micros             BIGINT NOT NULL,
    period                     CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    period_before              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance_before_micros      BIGINT NOT NULL,
    balance_after_micros       BIGINT NOT NULL,
    free_granted_before_micros BIGINT NOT NULL,
    free_granted_after_micros  BIGINT NOT NULL,
    free_used_before_micros    BIGINT NOT NULL,
    free_used_after_micros     BIGINT NOT NULL,
    request_id                 VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    api_id                     VARCHAR(128) NULL,
    description                VARCHAR(512) NULL,
    order_no                   VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    provider_txn_id            VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    adjustment_id              VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    reason                     VARCHAR(512) NULL,
    actor                      VARCHAR(64) NULL,
    created_at                 DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY ledger_record_id (record_id),
    UNIQUE KEY ledger_user_version (user_id, version),
    UNIQUE KEY ledger_user_request (user_id, request_id),
    UNIQUE KEY ledger_user_adjustment (user_id, adjustment_id),
    UNIQUE KEY ledger_provider_txn (provider_txn_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0004_create_recharge_orders.sql
-- Recharge orders. status: PENDING | PAID | FAILED (EXPIRED is a PENDING order past expires_at,
-- computed when read). provider_txn_id is the transaction that last decided the status.
CREATE TABLE IF NOT EXISTS recharge_orders (
    order_no        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros   BIGINT NOT NULL,
    channel         VARCHAR(32) NOT NULL,
    status          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idempotency_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    provider_txn_id VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at      DATETIME(6) NOT NULL,
    expires_at      DATETIME(6) NOT NULL,
    paid_at         DATETIME(6) NULL,
    updated_at      DATETIME(6) NOT NULL,
    PRIMARY KEY (order_no),
    UNIQUE KEY recharge_orders_user_key (user_id, idempotency_key),
    KEY recharge_orders_user_created (user_id, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0005_create_unmatched_payments.sql
-- Payments that arrived but could not be applied (invariant 7): stored for operators, never
-- refused. why: unknown_order | amount_mismatch | already_paid | balance_limit | failure_after_paid.
-- One row per provider transaction and outcome flag, so a repeated notification is a replay.
CREATE TABLE IF NOT EXISTS unmatched_payments (
    unmatched_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    order_no           VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id            VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    provider_txn_id    VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    success            BOOLEAN NOT NULL,
    paid_amount_micros BIGINT NOT NULL,
    why                VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at         DATETIME(6) NOT NULL,
    PRIMARY KEY (unmatched_id),
    UNIQUE KEY unmatched_payments_txn (provider_txn_id, success)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0006_create_outbox.sql
-- The transactional outbox: every committed change's event, written in the same transaction.
-- The relay publishes rows whose published_at is NULL and purges published ones after retention.
CREATE TABLE IF NOT EXISTS outbox (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id     CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    subject      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    payload      MEDIUMBLOB NOT NULL,
    traceparent  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at   DATETIME(6) NOT NULL,
    published_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY outbox_event_id (event_id),
    KEY outbox_unpublished (published_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0007_create_command_progress.sql
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

-- 0008_create_rm_accounts.sql
-- Read model (query-svc): one snapshot per account, the newest version seen in an event. A
-- snapshot is replaced only by a newer version, so redelivered and reordered events are harmless.
CREATE TABLE IF NOT EXISTS rm_accounts (
    user_id             VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    currency            CHAR(3) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance_micros      BIGINT NOT NULL,
    period              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    free_granted_micros BIGINT NOT NULL,
    free_used_micros    BIGINT NOT NULL,
    monthly_free_micros BIGINT NOT NULL,
    version             BIGINT NOT NULL,
    updated_at          DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0009_create_rm_records.sql
-- Read model (query-svc): the records a user sees, keyed by record id (inserted only if absent)
-- and ordered by the account version they produced. type: deduct | recharge | free_grant | adjust.
CREATE TABLE IF NOT EXISTS rm_records (
    record_id                   CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id                     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version                     BIGINT NOT NULL,
    type                        VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros               BIGINT NOT NULL,
    free_micros                 BIGINT NOT NULL,
    balance_micros              BIGINT NOT NULL,
    balance_after_micros        BIGINT NOT NULL,
    free_remaining_after_micros BIGINT NOT NULL,
    api_id                      VARCHAR(128) NULL,
    request_id                  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    order_no                    VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    period                      CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at                  DATETIME(6) NOT NULL,
    PRIMARY KEY (record_id),
    UNIQUE KEY rm_records_user_version (user_id, version),
    KEY rm_records_user_type_version (user_id, type, version),
    KEY rm_records_user_created (user_id, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0010_create_rm_daily_usage.sql
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

-- 0011_create_rm_orders.sql
-- Read model (query-svc): recharge orders as their owners see them. status_rank orders the
-- statuses (PENDING 0 < FAILED 1 < PAID 2) so an event applied late never moves an order back.
CREATE TABLE IF NOT EXISTS rm_orders (
    order_no        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros   BIGINT NOT NULL,
    channel         VARCHAR(32) NOT NULL,
    status          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status_rank     TINYINT NOT NULL,
    provider_txn_id VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at      DATETIME(6) NOT NULL,
    expires_at      DATETIME(6) NOT NULL,
    paid_at         DATETIME(6) NULL,
    PRIMARY KEY (order_no),
    KEY rm_orders_user_created (user_id, created_at, order_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0012_create_command_shards.sql
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

-- 0013_create_outbox_durability.sql
-- One row the outbox relay writes (and waits for) after it has read the rows it will publish and
-- before it publishes them: InnoDB shows a commit to other sessions before its redo log is on
-- disk, and this later commit's flush covers every commit the relay saw, so an event is never
-- published for a change a database crash could still lose.
CREATE TABLE IF NOT EXISTS outbox_durability (
    id         TINYINT NOT NULL,
    written_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0014_create_refunds.sql
-- Refunds of charges, partial or whole: one row per refund, beside its `refund` ledger row
-- (record_id). Its unique key makes a refund apply once per (user_id, refund_id); the charge's
-- refunds, summed part by part, never exceed the charge's parts. balance_micros went back to the
-- balance, free_micros back to the free quota of the charge's period, free_forfeited_micros was
-- the free part of a charge whose period had ended (not returned).
CREATE TABLE IF NOT EXISTS refunds (
    record_id             CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id               VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    refund_id             VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    charge_record_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount_micros         BIGINT NOT NULL,
    balance_micros        BIGINT NOT NULL,
    free_micros           BIGINT NOT NULL,
    free_forfeited_micros BIGINT NOT NULL,
    reason                VARCHAR(512) NOT NULL,
    created_at            DATETIME(6) NOT NULL,
    PRIMARY KEY (record_id),
    UNIQUE KEY refunds_user_refund (user_id, refund_id),
    KEY refunds_charge (charge_record_id),
    CONSTRAINT refunds_parts_add_up CHECK (amount_micros = balance_micros + free_micros + free_forfeited_micros),
    CONSTRAINT refunds_parts_not_negative CHECK (balance_micros >= 0 AND free_micros >= 0 AND free_forfeited_micros >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0015_create_alert_settings.sql
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

-- 0016_create_alert_deliveries.sql
-- One row per alert event delivered (or being delivered) to a developer's webhook: the attempts
-- made, the last answer, and how it ended. status: pending | delivered | failed | no_webhook.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    event_id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind             VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    url              VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NULL,
    status           VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    attempts         INT NOT NULL,
    last_http_status INT NULL,
    last_error       VARCHAR(512) NULL,
    first_attempt_at DATETIME(6) NOT NULL,
    last_attempt_at  DATETIME(6) NOT NULL,
    delivered_at     DATETIME(6) NULL,
    PRIMARY KEY (event_id),
    KEY alert_deliveries_user (user_id, first_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0017_add_account_holds.sql
-- Reservations hold part of an account: free_held_micros of the current period's free quota and
-- balance_held_micros of the balance, neither used nor available until the hold is settled or
-- released. The CHECKs extend invariant 1 to holds. Added only where missing, so a database
-- created from docs/sql/billing_service.sql (which already has them) takes this migration too.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND column_name = 'free_held_micros');
SET @ddl = IF(@missing,
  'ALTER TABLE accounts
     ADD COLUMN free_held_micros BIGINT NOT NULL DEFAULT 0 AFTER free_used_micros,
     ADD COLUMN balance_held_micros BIGINT NOT NULL DEFAULT 0 AFTER free_held_micros,
     ADD CONSTRAINT accounts_free_held_in_range CHECK (free_held_micros >= 0 AND free_used_micros + free_held_micros <= free_granted_micros),
     ADD CONSTRAINT accounts_balance_held_in_range CHECK (balance_held_micros BETWEEN 0 AND balance_micros)',
  'DO 0');
PREPARE add_holds FROM @ddl;
EXECUTE add_holds;
DEALLOCATE PREPARE add_holds;

-- 0018_add_ledger_holds.sql
-- Every ledger row keeps the holds before and after its change (the chain covers them), and
-- free_period: the month whose free quota the row's free part belongs to when it is not the
-- row's period (a hold taken before midnight and settled after it; NULL otherwise). Added only
-- where missing, like 0017.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'ledger'
                  AND column_name = 'free_held_before_micros');
SET @ddl = IF(@missing,
  'ALTER TABLE ledger
     ADD COLUMN free_held_before_micros BIGINT NOT NULL DEFAULT 0 AFTER free_used_after_micros,
     ADD COLUMN free_held_after_micros BIGINT NOT NULL DEFAULT 0 AFTER free_held_before_micros,
     ADD COLUMN balance_held_before_micros BIGINT NOT NULL DEFAULT 0 AFTER free_held_after_micros,
     ADD COLUMN balance_held_after_micros BIGINT NOT NULL DEFAULT 0 AFTER balance_held_before_micros,
     ADD COLUMN free_period CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NULL AFTER period_before',
  'DO 0');
PREPARE add_holds FROM @ddl;
EXECUTE add_holds;
DEALLOCATE PREPARE add_holds;

-- 0019_create_reservations.sql
-- Reservations (ReserveQuota): an amount held on an account for a call priced afterwards, free
-- quota first, then balance. One per (user_id, request_id), the charges' key space: the hold's
-- ledger row carries the request_id under the ledger's unique key, so a charge and a
-- reservation can never share one. status: held -> settled | released | expired.
-- hold_record_id / end_record_id: the ledger rows of the hold and of its end (the settle's
-- charge, or the release). period: the month whose free quota the hold took.
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id             VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    request_id          VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    api_id              VARCHAR(128) NOT NULL,
    amount_micros       BIGINT NOT NULL,
    free_held_micros    BIGINT NOT NULL,
    balance_held_micros BIGINT NOT NULL,
    period              CHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status              VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    hold_record_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    end_record_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    actual_micros       BIGINT NULL,
    created_at          DATETIME(6) NOT NULL,
    expires_at          DATETIME(6) NOT NULL,
    ended_at            DATETIME(6) NULL,
    PRIMARY KEY (reservation_id),
    UNIQUE KEY reservations_user_request (user_id, request_id),
    KEY reservations_expiring (status, expires_at),
    CONSTRAINT reservations_parts_add_up CHECK (amount_micros = free_held_micros + balance_held_micros)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- 0020_add_rm_account_holds.sql
-- The read model shows holds too: what reservations keep of the free quota and of the balance.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'rm_accounts'
                  AND column_name = 'free_held_micros');
SET @ddl = IF(@missing,
  'ALTER TABLE rm_accounts
     ADD COLUMN free_held_micros BIGINT NOT NULL DEFAULT 0 AFTER free_used_micros,
     ADD COLUMN balance_held_micros BIGINT NOT NULL DEFAULT 0 AFTER free_held_micros',
  'DO 0');
PREPARE add_holds FROM @ddl;
EXECUTE add_holds;
DEALLOCATE PREPARE add_holds;

-- 0021_index_reservation_ends.sql
-- A reservation found by the ledger row that ended it (its settle's charge or its release), so
-- the read model's rebuild and reconcile show that row with the reservation's request id.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.statistics
                WHERE table_schema = DATABASE() AND table_name = 'reservations'
                  AND index_name = 'reservations_user_end');
SET @ddl = IF(@missing,
  'CREATE INDEX reservations_user_end ON reservations (user_id, end_record_id)',
  'DO 0');
PREPARE add_index FROM @ddl;
EXECUTE add_index;
DEALLOCATE PREPARE add_index;

-- 0022_keys_byte_for_byte.sql
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

-- 0023_add_alert_signing_secret.sql
-- Each developer's alert deliveries are signed with a secret of their own, generated when their
-- first webhook is set (or on request) and shown to them once: a developer can no longer forge
-- another's alerts, and no alert signature is a payment callback's. The column takes the table's
-- NO PAD binary collation (0022). Added only where missing, so the migration can run again.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'alert_settings'
                  AND column_name = 'signing_secret');
SET @ddl = IF(@missing,
  'ALTER TABLE alert_settings ADD COLUMN signing_secret VARCHAR(128) NULL AFTER webhook_url',
  'DO 0');
PREPARE add_secret FROM @ddl;
EXECUTE add_secret;
DEALLOCATE PREPARE add_secret;

-- 0024_add_reservation_settles.sql
-- A reservation ends once (end_record_id: the ledger row of its first end, its settle's charge or
-- its release, never overwritten), but a hold that expired may still be settled afterwards (an
-- ordinary charge): that charge is linked on its own (settle_record_id), with what the settle's
-- answer said (settle_released_micros, settled_after_expiry), so replays answer what the first
-- call answered and the read model's rebuild finds both rows. Added only where missing.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'reservations'
                  AND column_name = 'settle_record_id');
SET @ddl = IF(@missing,
  'ALTER TABLE reservations
     ADD COLUMN settle_record_id CHAR(36) NULL AFTER end_record_id,
     ADD COLUMN settle_released_micros BIGINT NULL AFTER actual_micros,
     ADD COLUMN settled_after_expiry BOOLEAN NULL AFTER settle_released_micros,
     ADD INDEX reservations_user_settle (user_id, settle_record_id)',
  'DO 0');
PREPARE add_settles FROM @ddl;
EXECUTE add_settles;
DEALLOCATE PREPARE add_settles;
-- Reservations settled before this migration: their end is their settle (a settle after expiry
-- overwrote the release's link then, which cannot be recovered).
UPDATE reservations
   SET settle_record_id = end_record_id,
       settled_after_expiry = ended_at >= expires_at,
       settle_released_micros = IF(ended_at >= expires_at, 0, amount_micros - actual_micros)
 WHERE status = 'settled' AND settle_record_id IS NULL;

-- 0025_add_ledger_monthly_free.sql
-- The account's monthly free quota right after each ledger row, so that the answer to a replayed
-- command is made from what was recorded (a plan changed since does not change it). NULL in rows
-- written before: their replays show the account's monthly free quota of now. Added only where
-- missing.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'ledger'
                  AND column_name = 'monthly_free_after_micros');
SET @ddl = IF(@missing,
  'ALTER TABLE ledger ADD COLUMN monthly_free_after_micros BIGINT NULL AFTER balance_held_after_micros',
  'DO 0');
PREPARE add_monthly_free FROM @ddl;
EXECUTE add_monthly_free;
DEALLOCATE PREPARE add_monthly_free;

-- 0026_unmatched_payment_replays.sql
-- A replay of a payment notification is the same provider transaction for the same order and
-- amount: the same id with another order or amount is a payment of its own, stored as unmatched
-- too (invariant 7), so the unmatched payments' unique key takes the order and the amount.
-- account_version: the version of the order's account when the payment was stored, whose ledger
-- row gives a replay the account the first answer showed. Added only where missing.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'unmatched_payments'
                  AND column_name = 'account_version');
SET @ddl = IF(@missing,
  'ALTER TABLE unmatched_payments
     ADD COLUMN account_version BIGINT NULL AFTER why,
     DROP INDEX unmatched_payments_txn,
     ADD UNIQUE KEY unmatched_payments_txn (provider_txn_id, success, order_no, paid_amount_micros)',
  'DO 0');
PREPARE replays FROM @ddl;
EXECUTE replays;
DEALLOCATE PREPARE replays;

-- 0027_accounts_created_at.sql
-- command-svc's directory of account ids (read by CheckQuota) scans the accounts created since
-- its last scan, every half of `command.account_memory.max_age_ms`. created_at never changes
-- after the insert, so a charge's update does not touch this index. Added only where missing.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.statistics
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND index_name = 'accounts_created_at');
SET @ddl = IF(@missing, 'CREATE INDEX accounts_created_at ON accounts (created_at)', 'DO 0');
PREPARE created_at_index FROM @ddl;
EXECUTE created_at_index;
DEALLOCATE PREPARE created_at_index;

-- 0028_create_price_lists.sql
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

-- 0029_create_spend_limits.sql
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

-- 0030_spend_counters_in_accounts.sql
-- Spend limits move into the account's own row: accounts.spend_counters holds the user's limits,
-- each with the counter of its current window, as a JSON array (NULL: no limits). Every charge
-- already locks and writes the account row, so a limited account's charge locks no other row and
-- sends no other statement. Each element: {"scope": "account" | "api:<api_id>" | "key:<key_id>",
-- "window": "day" | "month", "limit_micros", "window_first_day" (the local date the counter's
-- window starts on), "spent_micros" (what the scope spent in it: charges decided in it and what
-- the reservations taken in it hold), "reached_published" (whether spend_limit_reached was
-- published for that window)}, ordered by scope and window. spend_limited says whether the
-- account has limits, indexed for the replicas' list of limited accounts; a CHECK keeps the two
-- in step.
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.columns
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND column_name = 'spend_counters');
SET @ddl = IF(@missing,
  'ALTER TABLE accounts ADD COLUMN spend_counters TEXT NULL',
  'DO 0');
PREPARE change_accounts FROM @ddl;
EXECUTE change_accounts;

-- The limits of 0029's table, copied once (the table is gone after this migration).
SET @old_table = (SELECT COUNT(*) > 0 FROM information_schema.tables
                  WHERE table_schema = DATABASE() AND table_name = 'spend_limits');
SET SESSION group_concat_max_len = 1048576;
SET @ddl = IF(@old_table,
  'UPDATE accounts a
     JOIN (SELECT user_id,
                  CONCAT(''['', GROUP_CONCAT(CONCAT(
                    ''{"scope":'', JSON_QUOTE(CONVERT(scope USING utf8mb4)),
                    '',"window":"'', CONVERT(window_kind USING utf8mb4),
                    ''","limit_micros":'', limit_micros,
                    '',"window_first_day":"'', DATE_FORMAT(window_first_day, ''%Y-%m-%d''),
                    ''","spent_micros":'', spent_micros,
                    '',"reached_published":'', IF(reached_published, ''true'', ''false''), ''}'')
                    ORDER BY scope, window_kind SEPARATOR '',''), '']'') AS counters
           FROM spend_limits GROUP BY user_id) l ON l.user_id = a.user_id
   SET a.spend_counters = l.counters, a.spend_limited = TRUE',
  'DO 0');
PREPARE copy_limits FROM @ddl;
EXECUTE copy_limits;
DEALLOCATE PREPARE copy_limits;
UPDATE accounts SET spend_limited = FALSE WHERE spend_counters IS NULL AND spend_limited;
DROP TABLE IF EXISTS spend_limits;

SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.statistics
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND index_name = 'accounts_spend_limited');
SET @ddl = IF(@missing,
  'ALTER TABLE accounts ADD INDEX accounts_spend_limited (spend_limited)',
  'DO 0');
PREPARE change_accounts FROM @ddl;
EXECUTE change_accounts;
SET @missing = (SELECT COUNT(*) = 0 FROM information_schema.table_constraints
                WHERE table_schema = DATABASE() AND table_name = 'accounts'
                  AND constraint_name = 'accounts_spend_limited_has_counters');
SET @ddl = IF(@missing,
  'ALTER TABLE accounts ADD CONSTRAINT accounts_spend_limited_has_counters
     CHECK (spend_limited = (spend_counters IS NOT NULL))',
  'DO 0');
PREPARE change_accounts FROM @ddl;
EXECUTE change_accounts;
DEALLOCATE PREPARE change_accounts;
