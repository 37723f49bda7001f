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
