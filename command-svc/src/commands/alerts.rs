//! A developer's alert settings. The alerts themselves are raised by the changes that cross
//! (`shared::alerts`, in every command's transaction); `bus::alerts` delivers them.

use super::{CommandError, Commands};
use crate::{domain::SetAlertSettings, store};

#[derive(Clone, Debug)]
pub struct AlertSettingsSaved {
    pub low_balance_threshold: shared::money::Micros,
    pub webhook_url: Option<String>,
}

impl Commands {
    /// Replaces the user's settings; setting the same ones again changes nothing. The account
    /// need not exist yet: its first change finds them.
    pub async fn set_alert_settings(
        &self,
        command: &SetAlertSettings,
    ) -> Result<AlertSettingsSaved, CommandError> {
        let webhook_url = command.webhook_url.as_ref().map(|url| url.as_str());
        self.store
            .retrying(|| {
                store::save_alert_settings(
                    self.store.pool(),
                    command.user_id.as_str(),
                    command.low_balance_threshold.get(),
                    webhook_url,
                    self.now(),
                )
            })
            .await?;
        Ok(AlertSettingsSaved {
            low_balance_threshold: command.low_balance_threshold,
            webhook_url: webhook_url.map(str::to_owned),
        })
    }
}
