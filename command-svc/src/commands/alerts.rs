//! A developer's alert settings. The alerts themselves are raised by the changes that cross
//! (`shared::alerts`, in every command's transaction); `bus::alerts` delivers them, signed with
//! the developer's own secret.

use super::{CommandError, Commands};
use crate::{
    domain::SetAlertSettings,
    store::{self, AlertSettingsRow, StoreError},
};

#[derive(Clone, Debug)]
pub struct AlertSettingsSaved {
    pub low_balance_threshold: shared::money::Micros,
    pub webhook_url: Option<String>,
    /// A signing secret made by this call (shown once), else `None`.
    pub new_signing_secret: Option<String>,
}

/// Whether the settings need a new signing secret: on request, or for a webhook that has none
/// yet (the first one set). A secret stays when the webhook is removed or changed, so a
/// developer who verifies deliveries keeps the secret they were shown.
fn needs_new_secret(command: &SetAlertSettings, stored: Option<&AlertSettingsRow>) -> bool {
    let has_secret = stored.is_some_and(|row| row.signing_secret.is_some());
    command.rotate_signing_secret || (command.webhook_url.is_some() && !has_secret)
}

impl Commands {
    /// Replaces the user's settings; setting the same ones again changes nothing (but a
    /// requested rotation). The account need not exist yet: its first change finds them.
    pub async fn set_alert_settings(
        &self,
        command: &SetAlertSettings,
    ) -> Result<AlertSettingsSaved, CommandError> {
        Ok(self
            .store
            .retrying(|| self.set_alert_settings_once(command))
            .await?)
    }

    async fn set_alert_settings_once(
        &self,
        command: &SetAlertSettings,
    ) -> Result<AlertSettingsSaved, StoreError> {
        let mut tx = self.store.begin().await?;
        let stored = store::lock_alert_settings(&mut tx, &command.user_id).await?;
        let new_signing_secret =
            needs_new_secret(command, stored.as_ref()).then(shared::signature::new_secret);
        let webhook_url = command
            .webhook_url
            .as_ref()
            .map(|url| url.as_str().to_owned());
        let row = AlertSettingsRow {
            low_balance_threshold_micros: Some(command.low_balance_threshold.get()),
            webhook_url: webhook_url.clone(),
            signing_secret: new_signing_secret
                .clone()
                .or_else(|| stored.and_then(|row| row.signing_secret)),
        };
        store::save_alert_settings(&mut tx, &command.user_id, &row, self.now()).await?;
        tx.commit().await?;
        Ok(AlertSettingsSaved {
            low_balance_threshold: command.low_balance_threshold,
            webhook_url,
            new_signing_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::{
        ids::{UserId, WebhookUrl},
        money::Micros,
    };

    use super::*;

    fn command(webhook: Option<&str>, rotate: bool) -> SetAlertSettings {
        SetAlertSettings {
            user_id: UserId::parse("user_id", "u1").unwrap(),
            low_balance_threshold: Micros::new(5),
            webhook_url: webhook.map(|url| WebhookUrl::parse("webhook_url", url).unwrap().unwrap()),
            rotate_signing_secret: rotate,
        }
    }

    fn stored(secret: Option<&str>) -> AlertSettingsRow {
        AlertSettingsRow {
            signing_secret: secret.map(str::to_owned),
            ..AlertSettingsRow::default()
        }
    }

    #[test]
    fn the_first_webhook_gets_a_secret_and_later_ones_keep_it() {
        let hook = Some("https://h.example/x");
        assert!(needs_new_secret(&command(hook, false), None));
        assert!(needs_new_secret(&command(hook, false), Some(&stored(None))));
        assert!(!needs_new_secret(
            &command(hook, false),
            Some(&stored(Some("s")))
        ));
        assert!(!needs_new_secret(&command(None, false), None));
        assert!(!needs_new_secret(
            &command(None, false),
            Some(&stored(Some("s")))
        ));
    }

    #[test]
    fn a_rotation_always_makes_a_new_secret() {
        assert!(needs_new_secret(&command(None, true), None));
        assert!(needs_new_secret(
            &command(Some("https://h.example/x"), true),
            Some(&stored(Some("s")))
        ));
    }
}
