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
