//! MQTT v5 packets on a byte stream, over the `mqtt-proto` codec (ADR 0006). The one
//! place bytes are read and written: the connection loop sees only `Packet`s. A packet is
//! read whole, at most `max` bytes of it, before it is decoded, so no declared length
//! makes the node allocate more than its limit.

use mqtt_proto::v5::{
    Auth, Connect, Disconnect, ErrorV5, Header, Packet, PacketType, Puback, Pubcomp, Publish, Pubrec, Pubrel,
    Subscribe, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why no packet could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between packets.
    #[error("connection closed")]
    Closed,
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(u32),
    /// A packet a client must not send (CONNACK, SUBACK, …).
    #[error("a client may not send {0}")]
    NotFromClient(PacketType),
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A CONNECT for another MQTT version than 5.
    #[error("unsupported protocol version")]
    UnsupportedProtocol,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one packet of at most `max` bytes (fixed header included).
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<Packet, ReadError> {
    let header = match Header::decode_async(r).await {
        Ok(h) => h,
        Err(ErrorV5::Common(e)) if e.is_eof() => return Err(ReadError::Closed),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    // (mqtt-proto's `Header::total_len` is the length of the length field, not the
    // packet's: count it ourselves.)
    let total =
        mqtt_proto::total_len(header.remaining_len as usize).map_err(|e| ReadError::Malformed(e.to_string()))?;
    if total > max as usize {
        return Err(ReadError::TooLarge(total as u32));
    }
    // Memory follows the bytes that arrive, not the length a peer declares.
    let mut body = Vec::new();
    r.take(header.remaining_len.into()).read_to_end(&mut body).await?;
    if body.len() != header.remaining_len as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    match decode_body(header, &mut body.as_slice()).await {
        Ok(p) => p,
        Err(ErrorV5::Common(mqtt_proto::Error::UnexpectedProtocol(_))) => Err(ReadError::UnsupportedProtocol),
        Err(e) => Err(ReadError::Malformed(e.to_string())),
    }
}

async fn decode_body(h: Header, b: &mut &[u8]) -> Result<Result<Packet, ReadError>, ErrorV5> {
    Ok(Ok(match h.typ {
        PacketType::Connect => Connect::decode_async(b, h).await?.into(),
        PacketType::Publish => Publish::decode_async(b, h).await?.into(),
        PacketType::Puback => Puback::decode_async(b, h).await?.into(),
        PacketType::Pubrec => Pubrec::decode_async(b, h).await?.into(),
        PacketType::Pubrel => Pubrel::decode_async(b, h).await?.into(),
        PacketType::Pubcomp => Pubcomp::decode_async(b, h).await?.into(),
        PacketType::Subscribe => Subscribe::decode_async(b, h).await?.into(),
        PacketType::Unsubscribe => Unsubscribe::decode_async(b, h).await?.into(),
        PacketType::Pingreq => Packet::Pingreq,
        PacketType::Disconnect => Disconnect::decode_async(b, h).await?.into(),
        PacketType::Auth => Auth::decode_async(b, h).await?.into(),
        other => return Ok(Err(ReadError::NotFromClient(other))),
    }))
}

/// Encodes `packets` and writes them in one go.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, packets: &[Packet]) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for p in packets {
        buf.extend_from_slice(&encode(p)?);
    }
    w.write_all(&buf).await?;
    w.flush().await
}

/// One packet as bytes (for another node: `relay.rs`).
pub fn encode(packet: &Packet) -> std::io::Result<Vec<u8>> {
    Ok(packet.encode().map_err(|e| std::io::Error::other(e.to_string()))?.as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_bytes(bytes: &[u8], max: u32) -> Result<Packet, ReadError> {
        read(&mut &bytes[..], max).await
    }

    #[tokio::test]
    async fn reads_a_ping_and_refuses_what_is_too_large_or_malformed() {
        assert_eq!(read_bytes(&[0xC0, 0x00], 16).await.unwrap(), Packet::Pingreq);
        assert!(matches!(read_bytes(&[], 16).await, Err(ReadError::Closed)));
        // A PUBLISH declaring 2^28-1 bytes: refused before anything is allocated or read.
        assert!(matches!(read_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 1024).await, Err(ReadError::TooLarge(_))));
        // A CONNACK is the server's to send.
        assert!(matches!(read_bytes(&[0x20, 0x03, 0, 0, 0], 16).await, Err(ReadError::NotFromClient(_))));
        // Reserved packet type 0, and a SUBSCRIBE with wrong flags.
        assert!(matches!(read_bytes(&[0x00, 0x00], 16).await, Err(ReadError::Malformed(_))));
        assert!(matches!(read_bytes(&[0x80, 0x00], 16).await, Err(ReadError::Malformed(_))));
        // A truncated body is an I/O error (the stream ended inside a packet).
        assert!(matches!(read_bytes(&[0x30, 0x05, 0x00], 16).await, Err(ReadError::Io(_))));
    }
}
