//! Sans-IO WebSocket (RFC 6455): the opening handshake's accept key, a frame
//! decoder for what a client sends, and the frame encoder for what the server
//! sends. The connection loop around it is the transport's
//! (`server::websocket_session`); services see whole messages.
//!
//! What the decoder enforces (each is a protocol error that closes the
//! connection with status 1002, or 1009 for a message over the limit): client
//! frames are masked; reserved bits are clear (no extension is negotiated);
//! opcodes are known; control frames are at most 125 bytes and not fragmented;
//! a continuation has a message to continue and a new message does not start
//! inside another; payload lengths use no more than 63 bits. Text messages are
//! checked as UTF-8 once whole (1007 otherwise).

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key.trim_ascii());
    h.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 §4.1 says: 16 bytes, base64.
pub fn valid_key(key: &[u8]) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key.trim_ascii())
        .is_ok_and(|k| k.len() == 16)
}

/// A whole message, or a control frame the session must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer closes, with its status code and reason (if any).
    Close(Option<u16>, String),
}

/// Why a client's bytes were refused; the close status to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub status: u16,
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Violation {
        Violation {
            status: 1002,
            reason,
        }
    }
}

/// Decodes frames from a client, assembling fragmented messages.
#[derive(Debug)]
pub struct Decoder {
    max_message_bytes: usize,
    /// Opcode and bytes of a fragmented message in progress.
    partial: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn new(max_message_bytes: usize) -> Decoder {
        Decoder {
            max_message_bytes,
            partial: None,
        }
    }

    /// Takes one frame from the start of `buf`. `Ok(None)`: more bytes are
    /// needed. `Ok(Some((used, frame)))`: `used` bytes consumed and, when the
    /// frame completed a message or is a control frame, what it means.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(usize, Option<Frame>)>, Violation> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(Violation::protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0f;
        if b1 & 0x80 == 0 {
            return Err(Violation::protocol("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(Violation::protocol("payload length over 63 bits"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x08 != 0;
        if control && (len > 125 || !fin) {
            return Err(Violation::protocol("control frames are short and whole"));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, b)| b.len());
        if len > (self.max_message_bytes - so_far.min(self.max_message_bytes)) as u64 {
            return Err(Violation {
                status: 1009,
                reason: "message larger than the server takes",
            });
        }
        let len = len as usize;
        if buf.len() < at + 4 + len {
            return Ok(None);
        }
        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        let payload: Vec<u8> = buf[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let used = at + len;
        let frame = match opcode {
            0x8 => {
                let (code, reason) = match payload.len() {
                    0 => (None, String::new()),
                    1 => return Err(Violation::protocol("close payload of one byte")),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        let reason =
                            String::from_utf8(payload[2..].to_vec()).map_err(|_| Violation {
                                status: 1007,
                                reason: "close reason is not UTF-8",
                            })?;
                        (Some(code), reason)
                    }
                };
                Some(Frame::Close(code, reason))
            }
            0x9 => Some(Frame::Ping(payload)),
            0xa => Some(Frame::Pong(payload)),
            0x0 => {
                let Some((first, mut bytes)) = self.partial.take() else {
                    return Err(Violation::protocol("continuation without a message"));
                };
                bytes.extend_from_slice(&payload);
                if fin {
                    Some(message(first, bytes)?)
                } else {
                    self.partial = Some((first, bytes));
                    None
                }
            }
            0x1 | 0x2 => {
                if self.partial.is_some() {
                    return Err(Violation::protocol("a new message inside a fragmented one"));
                }
                if fin {
                    Some(message(opcode, payload)?)
                } else {
                    self.partial = Some((opcode, payload));
                    None
                }
            }
            _ => return Err(Violation::protocol("unknown opcode")),
        };
        Ok(Some((used, frame)))
    }
}

fn message(opcode: u8, bytes: Vec<u8>) -> Result<Frame, Violation> {
    if opcode == 0x1 {
        String::from_utf8(bytes)
            .map(Frame::Text)
            .map_err(|_| Violation {
                status: 1007,
                reason: "text message is not UTF-8",
            })
    } else {
        Ok(Frame::Binary(bytes))
    }
}

/// Appends one unmasked server frame (whole, FIN set) to `out`.
pub fn encode(out: &mut Vec<u8>, frame: &Frame) {
    let (opcode, payload): (u8, std::borrow::Cow<'_, [u8]>) = match frame {
        Frame::Text(t) => (0x1, t.as_bytes().into()),
        Frame::Binary(b) => (0x2, b.as_slice().into()),
        Frame::Ping(b) => (0x9, b.as_slice().into()),
        Frame::Pong(b) => (0xa, b.as_slice().into()),
        Frame::Close(code, reason) => {
            let mut p = Vec::new();
            if let Some(c) = code {
                p.extend_from_slice(&c.to_be_bytes());
                // Control frames are at most 125 bytes.
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                p.extend_from_slice(&reason.as_bytes()[..end]);
            }
            (0x8, p.into())
        }
    };
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&payload);
}

/// Runs untrusted bytes through the decoder as a session would: the fuzz
/// target `websocket_frames` calls this, and so does a random-input test.
pub fn exercise(data: &[u8]) {
    let mut d = Decoder::new(1 << 16);
    let mut at = 0;
    while at < data.len() {
        match d.decode(&data[at..]) {
            Ok(Some((used, _))) => {
                assert!(
                    used > 0 && at + used <= data.len(),
                    "decoder overran its input"
                );
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"c2hvcnQ="));
        assert!(!valid_key(b"not base64 at all!"));
    }

    #[test]
    fn decodes_the_rfc_examples() {
        // RFC 6455 §5.7: a masked "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut d = Decoder::new(1024);
        assert_eq!(
            d.decode(&hello),
            Ok(Some((11, Some(Frame::Text("Hello".into())))))
        );
        // Every prefix is "need more".
        for cut in 0..hello.len() {
            assert_eq!(Decoder::new(1024).decode(&hello[..cut]), Ok(None));
        }
        // Fragmented "Hel" + "lo", with a ping between the fragments.
        let mut d = Decoder::new(1024);
        let a = client_frame(false, 0x1, b"Hel", [1, 2, 3, 4]);
        let p = client_frame(true, 0x9, b"hi", [5, 6, 7, 8]);
        let b = client_frame(true, 0x0, b"lo", [9, 9, 9, 9]);
        assert_eq!(d.decode(&a), Ok(Some((a.len(), None))));
        assert_eq!(
            d.decode(&p),
            Ok(Some((p.len(), Some(Frame::Ping(b"hi".to_vec())))))
        );
        assert_eq!(
            d.decode(&b),
            Ok(Some((b.len(), Some(Frame::Text("Hello".into())))))
        );
        // 16- and 64-bit lengths.
        for n in [200usize, 70_000] {
            let big = vec![7u8; n];
            let f = client_frame(true, 0x2, &big, [3, 1, 4, 1]);
            let mut d = Decoder::new(1 << 20);
            assert_eq!(d.decode(&f), Ok(Some((f.len(), Some(Frame::Binary(big))))));
        }
        let close = client_frame(true, 0x8, &[0x03, 0xe8, b'b', b'y', b'e'], [0; 4]);
        assert_eq!(
            Decoder::new(64).decode(&close),
            Ok(Some((
                close.len(),
                Some(Frame::Close(Some(1000), "bye".into()))
            )))
        );
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let refuse = |bytes: &[u8], status: u16| {
            let mut d = Decoder::new(1024);
            let mut at = 0;
            loop {
                match d.decode(&bytes[at..]) {
                    Ok(Some((used, _))) => at += used,
                    Ok(None) => panic!("accepted {bytes:?}"),
                    Err(v) => {
                        assert_eq!(v.status, status, "{v:?}");
                        return;
                    }
                }
            }
        };
        // Unmasked.
        refuse(&[0x81, 0x02, b'h', b'i'], 1002);
        // Reserved bit.
        refuse(&client_frame(true, 0x1 | 0x40, b"x", [1; 4]), 1002);
        // Unknown opcode.
        refuse(&client_frame(true, 0x3, b"x", [1; 4]), 1002);
        // Fragmented ping; long ping.
        refuse(&client_frame(false, 0x9, b"x", [1; 4]), 1002);
        refuse(&client_frame(true, 0x9, &[0; 126], [1; 4]), 1002);
        // Continuation out of nowhere; a message inside a message.
        refuse(&client_frame(true, 0x0, b"x", [1; 4]), 1002);
        let mut two = client_frame(false, 0x1, b"a", [1; 4]);
        two.extend(client_frame(true, 0x1, b"b", [1; 4]));
        refuse(&two, 1002);
        // Not UTF-8.
        refuse(&client_frame(true, 0x1, &[0xff, 0xfe], [1; 4]), 1007);
        // Over the limit, whole or by fragments.
        refuse(&client_frame(true, 0x2, &[0; 1025], [1; 4]), 1009);
        let mut parts = client_frame(false, 0x2, &[0; 600], [1; 4]);
        parts.extend(client_frame(true, 0x0, &[0; 600], [1; 4]));
        refuse(&parts, 1009);
        // A 64-bit length with the top bit set.
        refuse(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], 1002);
    }

    #[test]
    fn encodes_server_frames() {
        let mut out = Vec::new();
        encode(&mut out, &Frame::Text("Hello".into()));
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        out.clear();
        encode(&mut out, &Frame::Binary(vec![0; 300]));
        assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x2c]);
        out.clear();
        encode(&mut out, &Frame::Close(Some(1000), "é".repeat(100)));
        assert_eq!(out[0], 0x88);
        assert!(out[1] <= 125);
    }

    #[test]
    fn random_frames_never_panic() {
        let seed = client_frame(false, 0x1, b"Hel", [1, 2, 3, 4]);
        let seed2 = client_frame(true, 0x2, &[9; 300], [4, 3, 2, 1]);
        crate::mutate::each_mutation(&[&seed, &seed2], 20_000, 4, 17, exercise);
    }
}
