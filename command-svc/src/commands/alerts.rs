//! A developer's alert settings. The alerts themselves are raised by the changes that cross
//! (`shared::alerts`, in every command's transaction); `bus::alerts` delivers them, signed with
//! the developer's own secret.

use shared::{ids::UserId, money::Micros};

use super::{CommandError, Commands};
use crate::{
    domain::SetAlertSettings,
    store::{self, AlertSettingsRow, StoreError},
};

#[derive(Clone, Debug)]
pub struct AlertSettingsSaved {
    pub low_balance_threshold: Micros,
    pub webhook_url: Option<String>,
    /// A signing secret made by this call (shown once), else `None`.
    pub new_signing_secret: Option<String>,
}

/// A developer's settings as they apply: the threshold `balance_low` compares with (their own or
/// the default), the webhook, whether a signing secret exists.
#[derive(Clone, Debug)]
pub struct AlertSettingsShown {
    pub low_balance_threshold: Micros,
    pub threshold_set: bool,
    pub webhook_url: Option<String>,
    pub signing_secret_set: bool,
}

/// The settings after `command`: what it sets, what it keeps of `stored`, and the signing secret
/// to keep, or `new_secret()` when one is needed (returned too, to be shown once).
fn settings_after(
    command: &SetAlertSettings,
    stored: Option<AlertSettingsRow>,
    new_secret: impl FnOnce() -> String,
) -> (AlertSettingsRow, Option<String>) {
    let stored = stored.unwrap_or_default();
    let webhook_url = if command.keep_webhook_url {
        stored.webhook_url
    } else {
        command
            .webhook_url
            .as_ref()
            .map(|url| url.as_str().to_owned())
    };
    let threshold = if command.keep_threshold {
        stored.low_balance_threshold_micros
    } else {
        Some(command.low_balance_threshold.get())
    };
    // On request, or for a webhook that has none yet (the first one set). A secret stays when
    // the webhook is removed or changed, so a developer who verifies deliveries keeps the secret
    // they were shown.
    let needs_secret =
        command.rotate_signing_secret || (webhook_url.is_some() && stored.signing_secret.is_none());
    let made = needs_secret.then(new_secret);
    let row = AlertSettingsRow {
        low_balance_threshold_micros: threshold,
        webhook_url,
        signing_secret: made.clone().or(stored.signing_secret),
    };
    (row, made)
}

impl Commands {
    /// Replaces the user's settings, or the fields the command does not keep; setting the same
    /// ones again changes nothing (but a requested rotation). The account need not exist yet:
    /// its first change finds them.
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
        let (row, new_signing_secret) =
            settings_after(command, stored, shared::signature::new_secret);
        store::save_alert_settings(&mut tx, &command.user_id, &row, self.now()).await?;
        tx.commit().await?;
        Ok(AlertSettingsSaved {
            low_balance_threshold: self
                .rules
                .low_balance_threshold(row.low_balance_threshold_micros),
            webhook_url: row.webhook_url,
            new_signing_secret,
        })
    }

    /// The user's settings as they apply (the defaults for a user who set none).
    pub async fn get_alert_settings(
        &self,
        user_id: &UserId,
    ) -> Result<AlertSettingsShown, CommandError> {
        let stored = store::alert_settings_of(self.store.pool(), user_id)
            .await?
            .unwrap_or_default();
        Ok(AlertSettingsShown {
            low_balance_threshold: self
                .rules
                .low_balance_threshold(stored.low_balance_threshold_micros),
            threshold_set: stored.low_balance_threshold_micros.is_some(),
            webhook_url: stored.webhook_url,
            signing_secret_set: stored.signing_secret.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use shared::ids::WebhookUrl;

    use super::*;

    fn command(webhook: Option<&str>, rotate: bool) -> SetAlertSettings {
        SetAlertSettings {
            user_id: UserId::parse("user_id", "u1").unwrap(),
            low_balance_threshold: Micros::new(5),
            webhook_url: webhook.map(|url| WebhookUrl::parse("webhook_url", url).unwrap().unwrap()),
            rotate_signing_secret: rotate,
            keep_webhook_url: false,
            keep_threshold: false,
        }
    }

    fn stored(secret: Option<&str>) -> Option<AlertSettingsRow> {
        Some(AlertSettingsRow {
            low_balance_threshold_micros: Some(7),
            webhook_url: Some("https://old.example/x".to_owned()),
            signing_secret: secret.map(str::to_owned),
        })
    }

    fn made(command: &SetAlertSettings, stored: Option<AlertSettingsRow>) -> Option<String> {
        settings_after(command, stored, || "new".to_owned()).1
    }

    #[test]
    fn the_first_webhook_gets_a_secret_and_later_ones_keep_it() {
        let hook = Some("https://h.example/x");
        assert!(made(&command(hook, false), None).is_some());
        assert!(made(&command(hook, false), stored(None)).is_some());
        assert!(made(&command(hook, false), stored(Some("s"))).is_none());
        assert!(made(&command(None, false), None).is_none());
        let (row, _) = settings_after(&command(None, false), stored(Some("s")), String::new);
        assert_eq!(row.signing_secret.as_deref(), Some("s"));
    }

    #[test]
    fn a_rotation_always_makes_a_new_secret() {
        assert!(made(&command(None, true), None).is_some());
        let (row, made) = settings_after(
            &command(Some("https://h.example/x"), true),
            stored(Some("s")),
            || "new".to_owned(),
        );
        assert_eq!(
            (made.as_deref(), row.signing_secret.as_deref()),
            (Some("new"), Some("new"))
        );
    }

    #[test]
    fn a_replace_sets_both_fields_and_a_partial_update_keeps_what_it_names() {
        let (row, _) = settings_after(&command(None, false), stored(Some("s")), String::new);
        assert_eq!(
            (row.low_balance_threshold_micros, row.webhook_url),
            (Some(5), None)
        );
        let keep_hook = SetAlertSettings {
            keep_webhook_url: true,
            ..command(None, false)
        };
        let (row, _) = settings_after(&keep_hook, stored(Some("s")), String::new);
        assert_eq!(
            (row.low_balance_threshold_micros, row.webhook_url.as_deref()),
            (Some(5), Some("https://old.example/x"))
        );
        let keep_threshold = SetAlertSettings {
            keep_threshold: true,
            ..command(Some("https://h.example/y"), false)
        };
        let (row, _) = settings_after(&keep_threshold, stored(Some("s")), String::new);
        assert_eq!(
            (row.low_balance_threshold_micros, row.webhook_url.as_deref()),
            (Some(7), Some("https://h.example/y"))
        );
    }
}
