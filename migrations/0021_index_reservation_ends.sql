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
