//! Base64url without padding (RFC 7515 §2), strict: JWTs and JWKs only use this form.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some((c - b'A') as u32),
        b'a'..=b'z' => Some((c - b'a' + 26) as u32),
        b'0'..=b'9' => Some((c - b'0' + 52) as u32),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Decodes unpadded base64url; `None` on any character outside the alphabet, on `=`
/// padding, on an impossible length, or on non-zero trailing bits.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc: u32 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let b = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&b[1..4]),
            3 => {
                if b[3] != 0 {
                    return None;
                }
                out.extend_from_slice(&b[1..3]);
            }
            2 => {
                if b[2] != 0 || b[3] != 0 {
                    return None;
                }
                out.push(b[1]);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The Worker verifies tokens and keys; it makes only the development token
/// (`POST /api/dev/token`, refused unless `ENVIRONMENT=development`).
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut buf = [0u8; 3];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = (buf[0] as u32) << 16 | (buf[1] as u32) << 8 | buf[2] as u32;
        for i in 0..chunk.len() + 1 {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37).wrapping_add(250)).collect();
            assert_eq!(decode(&encode(&data)).unwrap(), data);
        }
    }

    #[test]
    fn matches_rfc_4648_vectors_in_the_url_alphabet() {
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(b"fo"), "Zm8");
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn rejects_padding_standard_alphabet_bad_length_and_dirty_bits() {
        assert_eq!(decode("Zm8="), None);
        assert_eq!(decode("+/8"), None);
        assert_eq!(decode("Zm9vY"), None);
        assert_eq!(decode("Zm9"), None); // 'fo' is "Zm8"; "Zm9" leaves a 1 in the spare bits
        assert_eq!(decode("Zm 8"), None);
    }
}
