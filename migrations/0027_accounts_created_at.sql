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
