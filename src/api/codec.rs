//! The protobuf codec of the native API: prost's, except that a message
//! that fails to decode is the caller's mistake (`INVALID_ARGUMENT`,
//! "malformed request: …"), not a server fault (`INTERNAL`), and that
//! each call's buffers start at [`BUFFER_BYTES`] instead of tonic's 8 KiB
//! each way. quotad's messages are a few hundred bytes (a buffer grows
//! for a larger one), and a long-lived call keeps its buffers: 16 KiB per
//! open `Hold` or `CheckStream` was most of what one costs.
//!
//! [`RlsCodec`] is the same for Envoy's `ShouldRateLimit`, whose answer is
//! an [`RlsReply`] written by its own encoder.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::rls_reply::RlsReply;

/// Named by the generated code through `codec_path` in `build.rs`.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SmallEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SmallEncoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.0.decoder())
    }
}

/// Prost's decoder with decode failures mapped to `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|s| Status::invalid_argument(format!("malformed request: {}", s.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// What a call's encode and decode buffers start at.
pub const BUFFER_BYTES: usize = 512;

fn settings() -> BufferSettings {
    // The yield threshold stays tonic's default (32 KiB).
    BufferSettings::new(BUFFER_BYTES, 32 * 1024)
}

/// Prost's encoder with [`BUFFER_BYTES`] buffers.
#[derive(Debug)]
pub struct SmallEncoder<T>(ProstEncoder<T>);

impl<T: Message> Encoder for SmallEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// The codec of Envoy RLS `ShouldRateLimit`: requests as the native API's
/// (malformed ones are `INVALID_ARGUMENT`), answers by [`RlsReply::encode`].
#[derive(Debug, Clone, Default)]
pub struct RlsCodec;

impl tonic::codec::Codec for RlsCodec {
    type Encode = RlsReply;
    type Decode = RateLimitRequest;
    type Encoder = RlsEncoder;
    type Decoder = StrictDecoder<RateLimitRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        RlsEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstDecoder::new(settings()))
    }
}

/// Writes an [`RlsReply`] into the call's buffer.
#[derive(Debug)]
pub struct RlsEncoder;

impl Encoder for RlsEncoder {
    type Item = RlsReply;
    type Error = Status;

    fn encode(&mut self, item: RlsReply, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("cannot encode the answer: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
