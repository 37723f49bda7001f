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
