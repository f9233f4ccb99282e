//! The challenge-response handshake of `multiprocessing.connection`, byte for byte CPython's
//! (`deliver_challenge` / `answer_challenge` in `Lib/multiprocessing/connection.py`).
//!
//! The side that *delivers* a challenge sends `#CHALLENGE#` followed by the message
//! `{sha256}` + 40 random bytes (CPython 3.12+). The other side answers with
//! `{sha256}` + HMAC-SHA256(authkey, message), computed over the whole message, prefix
//! included; the deliverer checks it in constant time and sends `#WELCOME#` or `#FAILURE#`.
//! Each side of a [`Listener`](crate::Listener)/[`Client`](crate::Client) connection does
//! both, so authentication is mutual.
//!
//! Older peers (CPython 3.11 and before) speak the legacy form, which the message lengths
//! reveal: their challenge is 20 random bytes with no prefix, and their answer is a bare
//! 16-byte HMAC-MD5. As CPython 3.12+ does, mp answers a legacy challenge with a bare HMAC-MD5
//! and accepts a bare HMAC-MD5 answer to its own challenge; a prefixed answer may use any of
//! CPython's digests (md5, sha256, sha384, sha3_256, sha3_384).
//!
//! Every handshake message is read with a limit of 256 bytes, as CPython does, so an
//! unauthenticated peer cannot make us allocate more.

use hmac::{Hmac, Mac};

use crate::error::{Error, Result};
use crate::stream::StreamEnd;
use crate::sys;

use mp_core::Deadline;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge (CPython 3.12+'s `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// The legacy challenge length and the legacy (HMAC-MD5) answer length.
const MD5ONLY_MESSAGE_LENGTH: usize = 20;
const MD5_DIGEST_LEN: usize = 16;
/// Longest digest name (`sha3_256`).
const MAX_DIGEST_LEN: usize = 8;
/// Handshake messages longer than this are refused (CPython's `recv_bytes(256)`).
pub(crate) const HANDSHAKE_LIMIT: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    Md5,
    Sha256,
    Sha384,
    Sha3_256,
    Sha3_384,
}

impl Digest {
    fn from_name(name: &[u8]) -> Option<Digest> {
        Some(match name {
            b"md5" => Digest::Md5,
            b"sha256" => Digest::Sha256,
            b"sha384" => Digest::Sha384,
            b"sha3_256" => Digest::Sha3_256,
            b"sha3_384" => Digest::Sha3_384,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha3_256 => "sha3_256",
            Digest::Sha3_384 => "sha3_384",
        }
    }

    fn mac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
            // HMAC accepts keys of any length (longer ones are hashed), so this cannot fail.
            let Ok(mut m) = <M as Mac>::new_from_slice(key) else {
                return Vec::new();
            };
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, msg),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, msg),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, msg),
            Digest::Sha3_256 => run::<Hmac<sha3::Sha3_256>>(key, msg),
            Digest::Sha3_384 => run::<Hmac<sha3::Sha3_384>>(key, msg),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// CPython's `_get_digest_name_and_payload`: `None` for the legacy (bare MD5) form.
fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8])> {
    if message.len() == MD5ONLY_MESSAGE_LENGTH || message.len() == MD5_DIGEST_LEN {
        return Ok((None, message));
    }
    if message.first() == Some(&b'{') {
        let end = message.len().min(MAX_DIGEST_LEN + 2);
        if let Some(curly) = message[1..end]
            .iter()
            .position(|&b| b == b'}')
            .map(|p| p + 1)
        {
            if let Some(d) = Digest::from_name(&message[1..curly]) {
                return Ok((Some(d), &message[curly + 1..]));
            }
        }
    }
    Err(Error::Authentication(format!(
        "unsupported message length ({} bytes), missing digest prefix, or unsupported digest",
        message.len()
    )))
}

/// CPython's `_create_response`.
pub(crate) fn create_response(authkey: &[u8], message: &[u8]) -> Result<Vec<u8>> {
    match digest_and_payload(message)?.0 {
        None => Ok(Digest::Md5.mac(authkey, message)),
        Some(d) => {
            let mut r = format!("{{{}}}", d.name()).into_bytes();
            r.extend_from_slice(&d.mac(authkey, message));
            Ok(r)
        }
    }
}

/// CPython's `_verify_challenge`.
fn verify_challenge(authkey: &[u8], message: &[u8], response: &[u8]) -> Result<()> {
    let (digest, mac) = digest_and_payload(response)?;
    let digest = digest.unwrap_or(Digest::Md5);
    let expected = digest.mac(authkey, message);
    if expected.len() != mac.len() {
        return Err(Error::Authentication(format!(
            "expected {:?} of length {} got {}",
            digest.name(),
            expected.len(),
            mac.len()
        )));
    }
    if !constant_time_eq(&expected, mac) {
        return Err(Error::Authentication(
            "digest received was wrong (the peer's authkey differs)".into(),
        ));
    }
    Ok(())
}

/// The refusal of a handshake frame announcing `size` bytes.
pub(crate) fn too_long(size: u64) -> Error {
    Error::Authentication(format!(
        "handshake message of {size} bytes refused (at most {HANDSHAKE_LIMIT}): the peer does not speak the protocol"
    ))
}

/// The error of a peer that went away in the middle of the handshake: not a failed
/// authentication (a dead server is not a wrong key), but [`Error::HandshakeClosed`].
pub(crate) fn closed_early() -> Error {
    Error::HandshakeClosed
}

/// A send or receive of the handshake that found the peer gone (end of file, a reset, a
/// broken pipe) is [`closed_early`]; any other error is kept.
fn gone_is_closed(e: Error) -> Error {
    match e {
        Error::Eof | Error::Truncated { .. } | Error::BrokenPipe => closed_early(),
        Error::Io { ref source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ENOTCONN)
            ) =>
        {
            closed_early()
        }
        e => e,
    }
}

/// Sends one handshake frame; a peer gone is [`closed_early`].
fn send_step(conn: &StreamEnd, bytes: &[u8]) -> Result<()> {
    conn.send_raw(bytes).map_err(gone_is_closed)
}

fn recv_limited(conn: &StreamEnd, deadline: Deadline) -> Result<Vec<u8>> {
    let frame = conn.recv_frame(deadline, &|size| {
        if size > HANDSHAKE_LIMIT as u64 {
            Err(too_long(size))
        } else {
            Ok(())
        }
    });
    frame.map(|f| f.to_vec()).map_err(gone_is_closed)
}

/// A fresh challenge: the message an answer must authenticate, and the frame that carries it
/// (`#CHALLENGE#` + the message).
pub(crate) fn new_challenge() -> Result<(Vec<u8>, Vec<u8>)> {
    let mut random = [0u8; MESSAGE_LENGTH];
    sys::random_bytes(&mut random)?;
    Ok(challenge_from(&random))
}

/// The challenge (message and frame) made of the given random bytes: [`new_challenge`]'s, and
/// the fixed one the fuzzing harnesses use so that their corpus can hold right answers.
pub(crate) fn challenge_from(random: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut message = b"{sha256}".to_vec();
    message.extend_from_slice(random);
    let mut challenge = CHALLENGE.to_vec();
    challenge.extend_from_slice(&message);
    (message, challenge)
}

/// Checks the peer's answer to our challenge `message`: the frame to send back (`#WELCOME#`
/// or `#FAILURE#`), and the verdict.
pub(crate) fn judge_answer(
    authkey: &[u8],
    message: &[u8],
    response: &[u8],
) -> (&'static [u8], Result<()>) {
    match verify_challenge(authkey, message, response) {
        Ok(()) => (WELCOME, Ok(())),
        Err(e) => (FAILURE, Err(e)),
    }
}

/// Our answer to the peer's challenge frame.
pub(crate) fn answer_for(authkey: &[u8], challenge: &[u8]) -> Result<Vec<u8>> {
    let Some(message) = challenge.strip_prefix(CHALLENGE) else {
        return Err(Error::Authentication(
            "protocol error, expected a challenge (is the peer a multiprocessing Listener with an authkey?)"
                .into(),
        ));
    };
    if message.len() < MD5ONLY_MESSAGE_LENGTH {
        return Err(Error::Authentication(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    create_response(authkey, message)
}

/// The peer's verdict on our answer.
pub(crate) fn check_verdict(verdict: &[u8]) -> Result<()> {
    if verdict != WELCOME {
        return Err(Error::Authentication(
            "digest sent was rejected (the peer's authkey differs)".into(),
        ));
    }
    Ok(())
}

/// Sends a challenge and checks the answer (CPython's `deliver_challenge`).
pub(crate) fn deliver_challenge(
    conn: &StreamEnd,
    authkey: &[u8],
    deadline: Deadline,
) -> Result<()> {
    deliver_challenge_with(conn, authkey, new_challenge()?, deadline)
}

/// [`deliver_challenge`] with a given challenge (`(message, frame)`, from [`challenge_from`]).
pub(crate) fn deliver_challenge_with(
    conn: &StreamEnd,
    authkey: &[u8],
    (message, challenge): (Vec<u8>, Vec<u8>),
    deadline: Deadline,
) -> Result<()> {
    send_step(conn, &challenge)?;
    let response = recv_limited(conn, deadline)?;
    let (reply, verdict) = judge_answer(authkey, &message, &response);
    match verdict {
        Ok(()) => send_step(conn, reply),
        Err(e) => {
            // The peer may be gone already; the authentication error is what matters.
            let _ = conn.send_raw(reply);
            Err(e)
        }
    }
}

/// Answers the peer's challenge (CPython's `answer_challenge`).
pub(crate) fn answer_challenge(conn: &StreamEnd, authkey: &[u8], deadline: Deadline) -> Result<()> {
    let challenge = recv_limited(conn, deadline)?;
    let response = answer_for(authkey, &challenge)?;
    send_step(conn, &response)?;
    check_verdict(&recv_limited(conn, deadline)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing_follows_cpython() {
        assert_eq!(digest_and_payload(&[0; 16]).unwrap().0, None);
        assert_eq!(digest_and_payload(&[0; 20]).unwrap().0, None);
        let (d, p) = digest_and_payload(b"{sha256}abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(d, Some(Digest::Sha256));
        assert_eq!(p, b"abcdefghijklmnopqrstuvwxyz");
        let (d, _) = digest_and_payload(b"{sha3_384}0123456789012345678901234").unwrap();
        assert_eq!(d, Some(Digest::Sha3_384));
        assert!(digest_and_payload(b"{sha1}0123456789012345678901234").is_err());
        assert!(digest_and_payload(b"sha256}0123456789012345678901234").is_err());
        assert!(digest_and_payload(b"{}").is_err());
        assert!(digest_and_payload(b"").is_err());
    }

    #[test]
    fn responses_verify_and_wrong_keys_do_not() {
        let message = b"{sha256}0123456789012345678901234567890123456789";
        let r = create_response(b"key", message).unwrap();
        assert!(r.starts_with(b"{sha256}"));
        assert_eq!(r.len(), 8 + 32);
        verify_challenge(b"key", message, &r).unwrap();
        assert!(verify_challenge(b"other", message, &r).is_err());
        // A legacy client answers our prefixed challenge with a bare HMAC-MD5 of all of it.
        let legacy = Digest::Md5.mac(b"key", message);
        assert_eq!(legacy.len(), 16);
        verify_challenge(b"key", message, &legacy).unwrap();
        // A legacy challenge gets a bare HMAC-MD5 answer.
        let old = [7u8; 20];
        assert_eq!(
            create_response(b"key", &old).unwrap(),
            Digest::Md5.mac(b"key", &old)
        );
    }

    #[test]
    fn hmac_matches_known_vectors() {
        // RFC 2104 / RFC 4231 test case 2 ("Jefe").
        let md5 = Digest::Md5.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            md5,
            [
                0x75, 0x0c, 0x78, 0x3e, 0x6a, 0xb0, 0xb5, 0x03, 0xea, 0xa8, 0x6e, 0x31, 0x0a, 0x5d,
                0xb7, 0x38
            ]
        );
        let sha = Digest::Sha256.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sha[..8], [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
