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
