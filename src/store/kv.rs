//! Typed KV keys. Every key plangate reads or writes is built here, so the formats
//! that other readers depend on are in one place and pinned by tests.

/// `APP_KV`: cached JWKS for one URL (the URL is hashed to keep keys short).
pub fn jwks_cache_key(jwks_url: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(jwks_url.as_bytes());
    format!("jwks:v1:{}", hex::encode(&digest[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jwks_cache_key_format_is_stable() {
        let k = jwks_cache_key("https://example.com/jwks");
        assert!(k.starts_with("jwks:v1:"));
        assert_eq!(k.len(), "jwks:v1:".len() + 24);
        assert_eq!(k, jwks_cache_key("https://example.com/jwks"));
        assert_ne!(k, jwks_cache_key("https://example.com/jwks2"));
    }
}
