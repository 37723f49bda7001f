//! The gRPC client through which query-svc forwards recharge orders to command-svc.

use shared::config::QuerySettings;

#[derive(Clone)]
pub struct CommandClient;

impl CommandClient {
    pub fn new(_settings: &QuerySettings) -> anyhow::Result<Self> {
        Ok(CommandClient)
    }
}
