//! The rows one transaction appends, gathered and sent as one script: one round trip for the
//! accounts, grants, ledger rows and outbox events of a whole batch of charges or of grants.
//! Each table's part is written by its own module (`impl Writes` there).

use shared::sql_script::SqlScript;

use super::{StoreError, Tx};

#[derive(Debug, Default)]
pub struct Writes {
    pub(super) script: SqlScript,
}

impl Writes {
    pub fn new() -> Writes {
        Writes::default()
    }

    /// Runs every statement in the transaction, in the order they were added. The first that
    /// fails (a duplicate key, say) stops the rest and is the error; the transaction is then
    /// the caller's to roll back.
    pub async fn run(self, tx: &mut Tx) -> Result<(), StoreError> {
        if self.script.is_empty() {
            return Ok(());
        }
        let text = self.script.into_string();
        sqlx::raw_sql(sqlx::AssertSqlSafe(text))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
