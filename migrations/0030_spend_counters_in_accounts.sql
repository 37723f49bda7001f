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
