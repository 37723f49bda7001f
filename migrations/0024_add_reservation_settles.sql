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
