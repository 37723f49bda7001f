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
