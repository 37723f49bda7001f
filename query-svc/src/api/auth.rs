//! JWT bearer authentication of the frontend's users.

use shared::config::AuthSettings;

#[derive(Clone)]
pub struct JwtKeys;

impl JwtKeys {
    pub fn from_settings(_settings: &AuthSettings) -> Self {
        JwtKeys
    }
}
