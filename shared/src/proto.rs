//! Types generated from `proto/billing/v1` by the build script.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("billing.v1");

    /// The encoded descriptor set of every billing proto file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/billing_descriptor.bin"));
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
