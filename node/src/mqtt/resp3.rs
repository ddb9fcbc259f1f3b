//! The state store's payloads: requests are RESP3 arrays of bulk strings, replies are
//! simple strings, integers, bulk strings and `-ERR` errors, byte for byte as the AIO SDKs
//! expect (reference §6–§9). Pure: bytes in, bytes out.

use bytes::Bytes;

/// Why a request payload is not an array of bulk strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxError;

/// Parses `*N\r\n` followed by N bulk strings `$len\r\n<bytes>\r\n`, and nothing after.
pub fn parse_request(payload: &[u8]) -> Result<Vec<Bytes>, SyntaxError> {
    let mut at = 0;
    let n = header(payload, &mut at, b'*')?;
    // Every element takes at least 6 bytes: a count beyond that is a lie, not an allocation.
    if n > payload.len() / 6 + 1 {
        return Err(SyntaxError);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = header(payload, &mut at, b'$')?;
        let end = at.checked_add(len).ok_or(SyntaxError)?;
        let body = payload.get(at..end).ok_or(SyntaxError)?;
        if payload.get(end..end + 2) != Some(b"\r\n") {
            return Err(SyntaxError);
        }
        out.push(Bytes::copy_from_slice(body));
        at = end + 2;
    }
    if at != payload.len() {
        return Err(SyntaxError);
    }
    Ok(out)
}

/// `<kind><decimal>\r\n` at `at`; advances past it.
fn header(p: &[u8], at: &mut usize, kind: u8) -> Result<usize, SyntaxError> {
    if p.get(*at) != Some(&kind) {
        return Err(SyntaxError);
    }
    let start = *at + 1;
    let digits = p[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 10 || p.get(start + digits..start + digits + 2) != Some(b"\r\n") {
        return Err(SyntaxError);
    }
    let n = std::str::from_utf8(&p[start..start + digits]).map_err(|_| SyntaxError)?;
    *at = start + digits + 2;
    n.parse().map_err(|_| SyntaxError)
}

/// `+OK\r\n`
pub const OK: &[u8] = b"+OK\r\n";
/// `$-1\r\n`: no such key.
pub const NIL: &[u8] = b"$-1\r\n";

pub fn int(n: i64) -> Bytes {
    Bytes::from(format!(":{n}\r\n"))
}

pub fn bulk(b: &[u8]) -> Bytes {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out.into()
}

/// `-ERR <text>\r\n`: every state-store error, texts as in reference §8.
pub fn err(text: &str) -> Bytes {
    Bytes::from(format!("-ERR {text}\r\n"))
}

/// An array of RESP3 values already encoded.
pub fn array(items: &[Bytes]) -> Bytes {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend_from_slice(i);
    }
    out.into()
}

/// A key notification: `NOTIFY SET VALUE <v>` or `NOTIFY DELETE` (reference §9).
pub fn notify(value: Option<&[u8]>) -> Bytes {
    match value {
        Some(v) => array(&[bulk(b"NOTIFY"), bulk(b"SET"), bulk(b"VALUE"), bulk(v)]),
        None => array(&[bulk(b"NOTIFY"), bulk(b"DELETE")]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_the_sdks_send() {
        let set = parse_request(b"*5\r\n$3\r\nSET\r\n$7\r\ntestkey\r\n$9\r\ntestvalue\r\n$2\r\nPX\r\n$2\r\n10\r\n");
        assert_eq!(set.unwrap(), ["SET", "testkey", "testvalue", "PX", "10"].map(Bytes::from));
        assert_eq!(parse_request(b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$0\r\n\r\n").unwrap().len(), 3);
        let scan = parse_request(b"*3\r\n$4\r\nSCAN\r\n$4\r\nkey*\r\n$3\r\n\x00\xffx\r\n").unwrap();
        assert_eq!(scan[2].as_ref(), b"\x00\xffx");
    }

    #[test]
    fn refuses_malformed_and_hostile_payloads() {
        for bad in [
            &b""[..],
            b"*",
            b"*1\r\n",
            b"*1\r\n$3\r\nGE",
            b"*1\r\n$3\r\nGETX\r\n",
            b"*1\r\n$3\r\nGET\r\nextra",
            b"*1\r\n$-1\r\n",
            b"*99999999999\r\n",
            b"*4000000000\r\n$1\r\nx\r\n",
            b"*1\r\n$18446744073709551615\r\nx\r\n",
            b"+OK\r\n",
            b"*1\n$3\nGET\n",
        ] {
            assert_eq!(parse_request(bad), Err(SyntaxError), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn replies_byte_for_byte() {
        assert_eq!(int(-1).as_ref(), b":-1\r\n");
        assert_eq!(bulk(b"1234").as_ref(), b"$4\r\n1234\r\n");
        assert_eq!(bulk(b"").as_ref(), b"$0\r\n\r\n");
        assert_eq!(err("syntax error").as_ref(), b"-ERR syntax error\r\n");
        assert_eq!(notify(Some(b"abc")).as_ref(), b"*4\r\n$6\r\nNOTIFY\r\n$3\r\nSET\r\n$5\r\nVALUE\r\n$3\r\nabc\r\n");
        assert_eq!(notify(None).as_ref(), b"*2\r\n$6\r\nNOTIFY\r\n$6\r\nDELETE\r\n");
    }

    proptest! {
        #[test]
        fn round_trips(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8)) {
            let encoded: Vec<Bytes> = items.iter().map(|i| bulk(i)).collect();
            let parsed = parse_request(&array(&encoded)).unwrap();
            prop_assert_eq!(parsed.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), items);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request(&bytes);
        }
    }
}
