//! The codec of every `rtcd.v1` client and server: prost's encoding with smaller per-RPC buffers.
//!
//! Why: tonic allocates `buffer_size` up front for each direction of every RPC (8 KiB by
//! default) and keeps it for the RPC's life. A session is one bidirectional stream that lives as
//! long as the call, so the default cost 16 KiB per participant at each end (proxy and rtcd)
//! for messages that are mostly a few hundred bytes. With heaptrack in the one-to-one
//! benchmark it was about a fifth of the proxy's heap per participant (less of its resident
//! memory: pages never written stay out of it). A larger message (an SDP of a few KiB) still
//! goes through: both directions reserve what a message needs.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Bytes allocated per direction of an RPC when it starts (tonic's default: 8 KiB). Most
/// signaling messages fit; an offer or answer grows the buffer to its size.
pub const BUFFER_SIZE: usize = 1024;

/// tonic's default: how much an encoder writes before it yields to the runtime.
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers. Named by `build.rs` (`codec_path`), so the
/// generated clients and servers use it; nothing else needs to name it.
#[derive(Debug, Clone)]
pub struct SignalingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SignalingCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SignalingCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

#[cfg(test)]
mod tests {
    use tonic::codec::{Decoder, Encoder};

    use super::*;
    use crate::v1::{ClientSignal, ServerSignal};

    /// Both directions start with the small buffer (tonic reads the settings from the encoder
    /// and the decoder when an RPC starts), not tonic's default. `BufferSettings` has no
    /// getters, so its debug form is compared.
    #[test]
    fn both_directions_start_small() {
        let mut codec = SignalingCodec::<ClientSignal, ServerSignal>::default();
        let ours = format!("{:?}", settings());
        assert_ne!(ours, format!("{:?}", BufferSettings::default()));
        assert_eq!(format!("{:?}", codec.encoder().buffer_settings()), ours);
        assert_eq!(format!("{:?}", codec.decoder().buffer_settings()), ours);
    }
}
