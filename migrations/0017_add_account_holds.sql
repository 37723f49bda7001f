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
