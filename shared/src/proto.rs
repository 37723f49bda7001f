//! Types generated from `proto/billing/v1` by the build script.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("billing.v1");

    /// The encoded descriptor set of every billing proto file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/billing_descriptor.bin"));
}

/// Subjects on the bus: events on `billing.v1.events.<kind>`, commands on
/// `billing.v1.commands.<name>`.
pub mod subjects {
    use super::v1::billing_event::Kind;

    pub const EVENTS_STREAM: &str = "BILLING_EVENTS";
    pub const EVENTS: &str = "billing.v1.events.>";
    pub const DLQ_STREAM: &str = "BILLING_EVENTS_DLQ";
    pub const DLQ: &str = "billing.v1.dlq.>";
    pub const COMMANDS_STREAM: &str = "BILLING_COMMANDS";
    pub const COMMANDS: &str = "billing.v1.commands.>";
    pub const RESET_FREE_QUOTA: &str = "billing.v1.commands.reset_free_quota";

    /// The snake_case name of the `oneof` field set, as used in the subject.
    pub fn kind_name(kind: &Kind) -> &'static str {
        match kind {
            Kind::QuotaDeducted(_) => "quota_deducted",
            Kind::BalanceRecharged(_) => "balance_recharged",
            Kind::FreeQuotaGranted(_) => "free_quota_granted",
            Kind::RechargeOrderCreated(_) => "recharge_order_created",
            Kind::RechargeOrderFailed(_) => "recharge_order_failed",
            Kind::BalanceAdjusted(_) => "balance_adjusted",
            Kind::PaymentUnmatched(_) => "payment_unmatched",
        }
    }

    /// The subject an event of this kind is published on.
    pub fn event_subject(kind: &Kind) -> String {
        format!("billing.v1.events.{}", kind_name(kind))
    }
}
