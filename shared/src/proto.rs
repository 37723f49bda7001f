//! Types generated from `proto/billing/v1` by the build script.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("billing.v1");

    /// The encoded descriptor set of every billing proto file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/billing_descriptor.bin"));
}
