//! Types generated from `proto/billing/v1` by the build script.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("billing.v1");

    /// The encoded descriptor set of every billing proto file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/billing_descriptor.bin"));
}

/// The `schema_version` of the events this build writes and reads; a consumer refuses (and
/// dead-letters) a version it does not know.
pub const EVENT_SCHEMA_VERSION: i32 = 1;

/// The HTTP/2 path of every RPC the billing protos declare, `/billing.v1.Service/Method`.
pub fn method_paths() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET)
        .expect("the build script encodes a valid descriptor set");
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths
}

/// The protobuf codec of the billing service's gRPC API: prost's, except that a request that does
/// not decode (bytes that are no message of its type, a text that is not UTF-8) is the caller's
/// fault, `INVALID_ARGUMENT`, where prost's codec reports `INTERNAL`, a fault of the server.
pub mod codec {
    use tonic::{
        Code, Status,
        codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    };
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    pub struct BillingCodec<T, U>(ProstCodec<T, U>);

    impl<T, U> Default for BillingCodec<T, U> {
        fn default() -> Self {
            BillingCodec(ProstCodec::default())
        }
    }

    impl<T, U> Codec for BillingCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = CallerDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            self.0.encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            CallerDecoder(self.0.decoder())
        }
    }

    pub struct CallerDecoder<U>(ProstDecoder<U>);

    impl<U: prost::Message + Default> Decoder for CallerDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|status| {
                Status::new(
                    Code::InvalidArgument,
                    format!("invalid argument: {}", status.message()),
                )
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rpc_of_the_command_service_has_its_path() {
        let paths = super::method_paths();
        for rpc in [
            "CheckQuota",
            "DeductQuota",
            "RechargeCallback",
            "AdjustBalance",
        ] {
            let path = format!("/billing.v1.BillingCommandService/{rpc}");
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
    }
}
