//! The rules every configured secret must meet before a service starts ("Running safely" in the
//! architecture): present, at least [`MIN_SECRET_BYTES`] long, not a development value or a
//! placeholder, and no two alike. A development machine (`dev_mode: true`) is let off the length
//! and the development values, with a warning; never the empty ones or the duplicates.

use std::collections::HashMap;

use super::{ConfigError, Secret, Settings};

/// The shortest secret accepted: 256 bits of a random string's worth.
pub const MIN_SECRET_BYTES: usize = 32;

/// The service whose secrets are checked: each needs only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Caller tokens (its gRPC callers) and the payment webhook's secrets.
    Command,
    /// The JWT secrets and the token it calls command-svc with.
    Query,
    /// No secret of its own.
    Scheduler,
}

/// Whether a value was written for a development machine or as a placeholder to replace.
fn is_development_value(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    lower.starts_with("dev-")
        || [
            "change-me",
            "changeme",
            "change_me",
            "replace_me",
            "replace-me",
            "placeholder",
            "example",
        ]
        .iter()
        .any(|marker| lower.contains(marker))
}

/// One secret against the rules; `dev_mode` lets short and development values through.
fn check_one(key: &'static str, secret: &Secret, dev_mode: bool) -> Result<(), ConfigError> {
    let value = secret.expose();
    let refuse = |why: &str| {
        Err(ConfigError::Invalid {
            key,
            why: why.to_owned(),
        })
    };
    if value.trim().is_empty() {
        // An empty entry in a rotation list (an empty variable, a trailing comma) would be a
        // key that anyone can sign with.
        if key.ends_with("_previous_secrets") {
            return refuse("an empty entry is not \"no secret\": remove it");
        }
        return refuse("missing: every secret must be set");
    }
    if dev_mode {
        return Ok(());
    }
    if is_development_value(value) {
        return refuse(
            "a development value or placeholder; set a real secret (or dev_mode: true on a development machine)",
        );
    }
    if value.len() < MIN_SECRET_BYTES {
        return refuse(&format!("shorter than {MIN_SECRET_BYTES} bytes"));
    }
    Ok(())
}

impl Settings {
    /// Every secret in the file, each with the key it is set under. `query.command_token` is
    /// left out: it is meant to repeat the token of a caller of command-svc.
    fn all_secrets(&self) -> Vec<(&'static str, &Secret)> {
        let mut all = self.caller_tokens();
        all.push(("auth.jwt_secret", &self.auth.jwt_secret));
        all.extend(self.jwt_previous_secrets());
        all.extend(self.webhook_secrets());
        all.extend(self.nats_secrets());
        all
    }

    /// The tokens command-svc's callers present.
    fn caller_tokens(&self) -> Vec<(&'static str, &Secret)> {
        self.auth
            .callers
            .iter()
            .map(|caller| ("auth.callers[].token", &caller.token))
            .collect()
    }

    /// The JWT secrets still accepted after a rotation.
    fn jwt_previous_secrets(&self) -> impl Iterator<Item = (&'static str, &Secret)> {
        self.auth
            .jwt_previous_secrets
            .iter()
            .map(|secret| ("auth.jwt_previous_secrets", secret))
    }

    /// The payment webhook's signing secret and those still accepted after a rotation.
    fn webhook_secrets(&self) -> impl Iterator<Item = (&'static str, &Secret)> {
        let previous = self.payment.webhook_previous_secrets.iter();
        std::iter::once(("payment.webhook_secret", &self.payment.webhook_secret))
            .chain(previous.map(|secret| ("payment.webhook_previous_secrets", secret)))
    }

    /// The secrets `service` uses, each with its key: its own, and the bus's when set (every
    /// service talks to NATS).
    fn secrets_of(&self, service: Service) -> Vec<(&'static str, &Secret)> {
        let mut own = self.own_secrets(service);
        own.extend(self.nats_secrets());
        own
    }

    /// The NATS password or token, when the bus asks for one.
    fn nats_secrets(&self) -> Vec<(&'static str, &Secret)> {
        [
            ("nats.password", &self.nats.password),
            ("nats.token", &self.nats.token),
        ]
        .into_iter()
        .filter(|(_, secret)| !secret.expose().is_empty())
        .collect()
    }

    fn own_secrets(&self, service: Service) -> Vec<(&'static str, &Secret)> {
        match service {
            Service::Command => {
                let mut own = self.caller_tokens();
                own.extend(self.webhook_secrets());
                own
            }
            Service::Query => {
                let mut own = vec![
                    ("auth.jwt_secret", &self.auth.jwt_secret),
                    ("query.command_token", &self.query.command_token),
                ];
                own.extend(self.jwt_previous_secrets());
                own
            }
            Service::Scheduler => Vec::new(),
        }
    }

    /// Refuses to start `service` with a secret it needs missing, short or a development value,
    /// or with two secrets of the configuration alike (a token that is also a signing key lets
    /// whoever holds one forge the other). Logs a warning when `dev_mode` lets values through.
    pub fn check_secrets(&self, service: Service) -> Result<(), ConfigError> {
        for (key, secret) in self.secrets_of(service) {
            check_one(key, secret, self.dev_mode)?;
        }
        self.check_distinct(service)?;
        if service == Service::Command && self.auth.callers.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth.callers",
                why: "no caller is configured: nobody could call command-svc".into(),
            });
        }
        if service == Service::Query
            && self.jwt_or_webhook_secret(self.query.command_token.expose())
        {
            return Err(ConfigError::Invalid {
                key: "query.command_token",
                why: "the same value as a signing secret".into(),
            });
        }
        if self.dev_mode {
            tracing::warn!(
                "dev_mode is on: development and short secrets are accepted; never run so in production"
            );
        }
        Ok(())
    }

    /// Refuses a secret of `service` that has the same value as another secret of the file (a
    /// token that is also a signing key lets whoever holds one forge the other). Pairs of other
    /// services' secrets are theirs to refuse.
    fn check_distinct(&self, service: Service) -> Result<(), ConfigError> {
        let own = self.secrets_of(service);
        let is_own = |secret: &Secret| own.iter().any(|(_, mine)| std::ptr::eq(*mine, secret));
        let mut seen: HashMap<&str, (&'static str, &Secret)> = HashMap::new();
        for (key, secret) in self.all_secrets() {
            let value = secret.expose();
            if value.is_empty() {
                continue;
            }
            if let Some((first_key, first)) = seen.insert(value, (key, secret))
                && (is_own(first) || is_own(secret))
            {
                return Err(ConfigError::Invalid {
                    key,
                    why: format!("the same value as {first_key}: every secret must be distinct"),
                });
            }
        }
        Ok(())
    }

    fn jwt_or_webhook_secret(&self, value: &str) -> bool {
        self.all_secrets()
            .into_iter()
            .filter(|(key, _)| !key.starts_with("auth.callers"))
            .any(|(_, secret)| secret.expose() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CallerSettings, Scope};

    const STRONG: [&str; 7] = [
        "q2Vb1Nc0uYw8R7tZk3LmP9sDf6HgJx4E",
        "Wm5Qe8Rt1Yu4Io7Pa0Sd3Fg6Hj9Kl2Zx",
        "Zc7Vb0Nm3Qw6Er9Ty2Ui5Op8As1Df4Gh",
        "Jk1Lz4Xc7Vb0Nm3Qw6Er9Ty2Ui5Op8As",
        "Df4Gh7Jk1Lz4Xc7Vb0Nm3Qw6Er9Ty2Ui",
        "Op8As1Df4Gh7Jk1Lz4Xc7Vb0Nm3Qw6Er",
        "Ty2Ui5Op8As1Df4Gh7Jk1Lz4Xc7Vb0Nm",
    ];

    /// A production-like configuration: every secret strong and distinct.
    fn production() -> Settings {
        let path = std::env::temp_dir().join(format!(
            "billing-secrets-{}-{}.yaml",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, "billing:\n  time_zone: UTC\n").unwrap();
        let mut settings = Settings::load_with_env(&path, Some(HashMap::new())).unwrap();
        settings.auth.callers = ["gateway", "query-svc", "payment", "ops"]
            .iter()
            .zip([Scope::Quota, Scope::Orders, Scope::Payment, Scope::Admin])
            .zip(STRONG)
            .map(|((name, scope), token)| CallerSettings {
                name: (*name).to_owned(),
                token: Secret::new(token),
                scopes: vec![scope],
            })
            .collect();
        settings.query.command_token = Secret::new(STRONG[1]);
        settings.auth.jwt_secret = Secret::new(STRONG[4]);
        settings.payment.webhook_secret = Secret::new(STRONG[5]);
        settings
    }

    fn refused_key(settings: &Settings, service: Service) -> &'static str {
        match settings.check_for(service) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn strong_distinct_secrets_start_every_service() {
        let settings = production();
        for service in [Service::Command, Service::Query, Service::Scheduler] {
            settings.check_for(service).unwrap();
        }
    }

    #[test]
    fn a_missing_secret_is_refused_by_the_service_that_needs_it() {
        let mut settings = production();
        settings.payment.webhook_secret = Secret::new("");
        assert_eq!(
            refused_key(&settings, Service::Command),
            "payment.webhook_secret"
        );
        settings.check_for(Service::Scheduler).unwrap();
        settings.check_for(Service::Query).unwrap();
        let mut settings = production();
        settings.auth.jwt_secret = Secret::new("   ");
        assert_eq!(refused_key(&settings, Service::Query), "auth.jwt_secret");
        settings.dev_mode = true;
        assert_eq!(refused_key(&settings, Service::Query), "auth.jwt_secret");
    }

    #[test]
    fn development_values_placeholders_and_short_secrets_are_refused_unless_dev_mode() {
        for weak in [
            "change-me",
            "dev-gateway-token-0123456789abcdefghijkl",
            "REPLACE_ME-gateway-token-0123456789abcdef",
            "a-placeholder-for-the-real-secret-value-1",
            "short-but-random-q2Vb1Nc0",
        ] {
            let mut settings = production();
            settings.auth.callers[0].token = Secret::new(weak);
            assert_eq!(
                refused_key(&settings, Service::Command),
                "auth.callers[].token",
                "{weak}"
            );
            settings.dev_mode = true;
            settings.check_for(Service::Command).unwrap();
        }
    }

    #[test]
    fn two_secrets_alike_are_refused_even_in_dev_mode() {
        let mut settings = production();
        settings.payment.webhook_secret = settings.auth.jwt_secret.clone();
        settings.dev_mode = true;
        for service in [Service::Command, Service::Query] {
            assert_eq!(refused_key(&settings, service), "payment.webhook_secret");
        }
        // Neither is the scheduler's: it checks only its own settings.
        settings.check_for(Service::Scheduler).unwrap();
        let mut settings = production();
        settings.auth.callers[2].token = settings.auth.callers[0].token.clone();
        assert_eq!(
            refused_key(&settings, Service::Command),
            "auth.callers[].token"
        );
        let mut settings = production();
        settings.query.command_token = settings.auth.jwt_secret.clone();
        assert_eq!(
            refused_key(&settings, Service::Query),
            "query.command_token"
        );
    }

    #[test]
    fn a_bus_password_follows_the_rules_too() {
        let mut settings = production();
        settings.nats.user = "billing".into();
        settings.nats.password = Secret::new("dev-nats-password");
        for service in [Service::Command, Service::Query, Service::Scheduler] {
            assert_eq!(refused_key(&settings, service), "nats.password");
        }
        settings.nats.password = settings.auth.jwt_secret.clone();
        assert_eq!(refused_key(&settings, Service::Scheduler), "nats.password");
        settings.nats.password = Secret::new(STRONG[6]);
        settings.check_for(Service::Scheduler).unwrap();
    }

    #[test]
    fn command_svc_needs_a_caller() {
        let mut settings = production();
        settings.auth.callers.clear();
        assert_eq!(refused_key(&settings, Service::Command), "auth.callers");
    }

    #[test]
    fn the_repository_config_is_a_development_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
        let mut settings = Settings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert!(settings.dev_mode);
        for service in [Service::Command, Service::Query, Service::Scheduler] {
            settings.check_for(service).unwrap();
        }
        settings.dev_mode = false;
        assert_eq!(
            refused_key(&settings, Service::Command),
            "auth.callers[].token"
        );
        assert_eq!(refused_key(&settings, Service::Query), "auth.jwt_secret");
    }
}
