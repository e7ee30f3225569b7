use actix_web::HttpRequest;
use actix_web::http::header;
use lambdalake_kafka::Secret;

/// `Ok` when no key is configured or the request carries `Authorization: Bearer <a valid key>`.
pub(crate) fn check(req: &HttpRequest, keys: &[Secret]) -> Result<(), &'static str> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err("missing Authorization header; expected `Authorization: Bearer <api key>`");
    };
    // the scheme is case-insensitive (RFC 7235)
    let Some(token) = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
    else {
        return Err("malformed Authorization header; expected `Authorization: Bearer <api key>`");
    };
    // compare against every key, in time independent of where the bytes differ
    let mut found = false;
    for key in keys {
        found |= constant_time_eq(token.trim().as_bytes(), key.expose().as_bytes());
    }
    if found {
        Ok(())
    } else {
        Err("invalid API key")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
