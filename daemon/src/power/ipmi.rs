//! IPMI v2.0 over LAN (RMCP+, what `ipmitool -I lanplus` speaks), cipher suite 3: RAKP-HMAC-SHA1
//! authentication, HMAC-SHA1-96 integrity, AES-CBC-128 confidentiality — the suite nearly every
//! BMC offers. One session per operation: open (Open Session, RAKP 1–4), raise the privilege
//! to administrator, one or two chassis commands, close.
//!
//! Every wait is bounded (a try of [`TRY`], [`TRIES`] tries, the whole operation within the
//! caller's deadline), every answer is checked (its session, its integrity code, its length,
//! its request sequence) before a byte of it is used, and nothing of the credentials is kept
//! beyond the session's keys.

use std::net::SocketAddr;
use std::time::Duration;

use aes::Aes128;
use cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use tokio::net::UdpSocket;

use super::{PowerAction, PowerError, PowerState};

/// How long one try waits for an answer.
const TRY: Duration = Duration::from_millis(1500);
/// How many times a request is sent before the BMC counts as not answering.
const TRIES: usize = 3;

const RMCP: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const AUTH_RMCP_PLUS: u8 = 0x06;
const PAYLOAD_IPMI: u8 = 0x00;
const OPEN_SESSION_REQUEST: u8 = 0x10;
const OPEN_SESSION_RESPONSE: u8 = 0x11;
const RAKP1: u8 = 0x12;
const RAKP2: u8 = 0x13;
const RAKP3: u8 = 0x14;
const RAKP4: u8 = 0x15;
const ENCRYPTED: u8 = 0x80;
const AUTHENTICATED: u8 = 0x40;
/// Administrator, looked up by name only (RAKP 1's role byte).
const ROLE_ADMIN_BY_NAME: u8 = 0x14;
const ADMIN: u8 = 0x04;
const BMC_ADDR: u8 = 0x20;
const CONSOLE_ADDR: u8 = 0x81;

type HmacSha1 = Hmac<Sha1>;

/// Tells an answer to the request from others: `None` to keep waiting (not ours), or the
/// payload, or why it is unusable.
type Accept<'a> = dyn FnMut(&[u8]) -> Option<Result<Vec<u8>, String>> + Send + 'a;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut mac = <HmacSha1 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random generator works");
    out
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// What a completion code means, for messages.
fn completion(code: u8) -> String {
    let what = match code {
        0xc0 => "the BMC is busy",
        0xc1 => "the command is not supported",
        0xc3 => "timeout",
        0xc7 | 0xc8 => "a wrong request length",
        0xcc => "an invalid field (the BMC cannot do this)",
        0xd4 => "insufficient privilege (the user must be an administrator)",
        0xd5 => "not supported in the BMC's present state",
        0xff => "an unspecified error",
        _ => "an error",
    };
    format!("completion code {code:#04x}: {what}")
}

/// An open RMCP+ session.
struct Session {
    socket: UdpSocket,
    peer: SocketAddr,
    /// Ours (the BMC puts it in what it sends us).
    console_id: u32,
    /// The BMC's (we put it in what we send).
    bmc_id: u32,
    seq: u32,
    rq_seq: u8,
    /// Integrity key (K1) and the AES key (the first 16 bytes of K2).
    k1: [u8; 20],
    k2: [u8; 16],
}

/// A packet without a session (session set-up): the RMCP+ header, then the payload.
fn plain_packet(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = RMCP.to_vec();
    p.push(AUTH_RMCP_PLUS);
    p.push(payload_type);
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// The payload type and payload of an RMCP+ packet, after its header's checks; `session`
/// (the console id and K1) checks the integrity code of an authenticated one.
fn parse_packet(packet: &[u8], session: Option<(u32, &[u8; 20])>) -> Result<(u8, Vec<u8>), String> {
    if packet.len() < 16 || packet[..4] != RMCP {
        return Err("not an RMCP packet".into());
    }
    if packet[4] != AUTH_RMCP_PLUS {
        return Err(format!(
            "an IPMI v1.5 answer (auth type {:#04x})",
            packet[4]
        ));
    }
    let payload_type = packet[5];
    let id = u32::from_le_bytes(packet[6..10].try_into().expect("4 bytes"));
    let len = u16::from_le_bytes([packet[14], packet[15]]) as usize;
    let end = 16 + len;
    if packet.len() < end {
        return Err(format!(
            "a payload of {len} bytes in a {}-byte packet",
            packet.len()
        ));
    }
    let payload = packet[16..end].to_vec();
    match session {
        None => Ok((payload_type & 0x3f, payload)),
        Some((console_id, k1)) => {
            if id != console_id {
                return Err(format!(
                    "an answer for session {id:#x}, not {console_id:#x}"
                ));
            }
            if payload_type & AUTHENTICATED == 0 {
                return Err("an unauthenticated answer inside the session".into());
            }
            // Integrity pad, pad length, next header (0x07), then 12 bytes of code.
            if packet.len() < end + 2 + 12 || !packet.len().is_multiple_of(4) {
                return Err("a session trailer of the wrong length".into());
            }
            let code_at = packet.len() - 12;
            if packet[code_at - 1] != 0x07 {
                return Err("a session trailer without its next-header byte".into());
            }
            let expected = hmac(k1, &[&packet[4..code_at]]);
            if !crate::secrets::constant_time_eq_bytes(&expected[..12], &packet[code_at..]) {
                return Err("an answer whose integrity code does not check".into());
            }
            Ok((payload_type & 0x3f, payload))
        }
    }
}

impl Session {
    async fn exchange(
        socket: &UdpSocket,
        peer: SocketAddr,
        packets: &mut (dyn FnMut() -> Vec<u8> + Send),
        accept: &mut Accept<'_>,
        what: &str,
    ) -> Result<Vec<u8>, PowerError> {
        let mut buf = vec![0u8; 1024];
        for _ in 0..TRIES {
            socket
                .send_to(&packets(), peer)
                .await
                .map_err(|e| PowerError::Unreachable(format!("{what}: {e}")))?;
            let deadline = tokio::time::Instant::now() + TRY;
            loop {
                let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
                let Ok(received) = received else { break };
                let (n, from) =
                    received.map_err(|e| PowerError::Unreachable(format!("{what}: {e}")))?;
                if from != peer {
                    continue;
                }
                // Not ours (a late answer to an earlier try): keep waiting.
                match accept(&buf[..n]) {
                    None => continue,
                    Some(Ok(payload)) => return Ok(payload),
                    Some(Err(e)) => return Err(PowerError::Protocol(format!("{what}: {e}"))),
                }
            }
        }
        Err(PowerError::Unreachable(format!(
            "{what}: no answer after {TRIES} tries of {} ms",
            TRY.as_millis()
        )))
    }

    /// Opens a session as `user` (an administrator of the BMC).
    async fn open(peer: SocketAddr, user: &str, password: &str) -> Result<Session, PowerError> {
        if user.is_empty() || user.len() > 16 {
            return Err(PowerError::Protocol(
                "an IPMI user name is 1 to 16 bytes".into(),
            ));
        }
        if password.len() > 20 {
            return Err(PowerError::Protocol(
                "an IPMI v2.0 password is at most 20 bytes".into(),
            ));
        }
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| PowerError::Unreachable(format!("a UDP socket: {e}")))?;
        let console_id = u32::from_le_bytes(random::<4>()) | 1;
        let tag = random::<1>()[0];

        // Open Session: cipher suite 3's three algorithms.
        let mut open = vec![tag, 0, 0, 0];
        open.extend_from_slice(&console_id.to_le_bytes());
        open.extend_from_slice(&[0x00, 0, 0, 0x08, 0x01, 0, 0, 0]);
        open.extend_from_slice(&[0x01, 0, 0, 0x08, 0x01, 0, 0, 0]);
        open.extend_from_slice(&[0x02, 0, 0, 0x08, 0x01, 0, 0, 0]);
        let answer = Self::exchange(
            &socket,
            peer,
            &mut || plain_packet(OPEN_SESSION_REQUEST, &open),
            &mut |packet| match parse_packet(packet, None) {
                Ok((OPEN_SESSION_RESPONSE, p)) if p.first() == Some(&tag) => Some(Ok(p)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
            "Open Session",
        )
        .await?;
        if answer.len() < 12 {
            return Err(PowerError::Protocol("a short Open Session answer".into()));
        }
        if answer[1] != 0 {
            return Err(match answer[1] {
                0x11 => PowerError::Protocol(
                    "the BMC does not offer cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128)"
                        .into(),
                ),
                code => PowerError::Protocol(format!("Open Session refused (status {code:#04x})")),
            });
        }
        let bmc_id = u32::from_le_bytes(answer[8..12].try_into().expect("4 bytes"));

        // RAKP 1 and 2: the BMC proves it knows the password.
        let rm = random::<16>();
        let name = user.as_bytes();
        let mut rakp1 = vec![tag, 0, 0, 0];
        rakp1.extend_from_slice(&bmc_id.to_le_bytes());
        rakp1.extend_from_slice(&rm);
        rakp1.extend_from_slice(&[ROLE_ADMIN_BY_NAME, 0, 0, name.len() as u8]);
        rakp1.extend_from_slice(name);
        let rakp2 = Self::exchange(
            &socket,
            peer,
            &mut || plain_packet(RAKP1, &rakp1),
            &mut |packet| match parse_packet(packet, None) {
                Ok((RAKP2, p)) if p.first() == Some(&tag) => Some(Ok(p)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
            "RAKP 1",
        )
        .await?;
        if rakp2.len() < 2 {
            return Err(PowerError::Protocol("a short RAKP 2".into()));
        }
        match rakp2[1] {
            0 => {}
            0x0d | 0x09 | 0x0f => return Err(PowerError::Credentials),
            code => {
                return Err(PowerError::Protocol(format!(
                    "RAKP 2 refused (status {code:#04x})"
                )));
            }
        }
        if rakp2.len() < 60 {
            return Err(PowerError::Protocol("a short RAKP 2".into()));
        }
        let rc: [u8; 16] = rakp2[8..24].try_into().expect("16 bytes");
        let guid: [u8; 16] = rakp2[24..40].try_into().expect("16 bytes");
        let kuid = password.as_bytes();
        let role_len = [ROLE_ADMIN_BY_NAME, name.len() as u8];
        let expected = hmac(
            kuid,
            &[
                &console_id.to_le_bytes(),
                &bmc_id.to_le_bytes(),
                &rm,
                &rc,
                &guid,
                &role_len,
                name,
            ],
        );
        if !crate::secrets::constant_time_eq_bytes(&expected, &rakp2[40..60]) {
            // The BMC computed it with another password than ours.
            return Err(PowerError::Credentials);
        }
        let sik = hmac(kuid, &[&rm, &rc, &role_len, name]);
        let k1 = hmac(&sik, &[&[0x01; 20]]);
        let k2_full = hmac(&sik, &[&[0x02; 20]]);
        let k2: [u8; 16] = k2_full[..16].try_into().expect("16 bytes");

        // RAKP 3 and 4: we prove it, the BMC confirms the session keys.
        let mut rakp3 = vec![tag, 0, 0, 0];
        rakp3.extend_from_slice(&bmc_id.to_le_bytes());
        rakp3.extend_from_slice(&hmac(
            kuid,
            &[&rc, &console_id.to_le_bytes(), &role_len, name],
        ));
        let rakp4 = Self::exchange(
            &socket,
            peer,
            &mut || plain_packet(RAKP3, &rakp3),
            &mut |packet| match parse_packet(packet, None) {
                Ok((RAKP4, p)) if p.first() == Some(&tag) => Some(Ok(p)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
            "RAKP 3",
        )
        .await?;
        if rakp4.len() < 2 {
            return Err(PowerError::Protocol("a short RAKP 4".into()));
        }
        match rakp4[1] {
            0 => {}
            0x0d | 0x0f => return Err(PowerError::Credentials),
            code => {
                return Err(PowerError::Protocol(format!(
                    "RAKP 4 refused (status {code:#04x})"
                )));
            }
        }
        if rakp4.len() < 20 {
            return Err(PowerError::Protocol("a short RAKP 4".into()));
        }
        let icv = hmac(&sik, &[&rm, &bmc_id.to_le_bytes(), &guid]);
        if !crate::secrets::constant_time_eq_bytes(&icv[..12], &rakp4[8..20]) {
            return Err(PowerError::Protocol(
                "RAKP 4's integrity check value does not match the session keys".into(),
            ));
        }
        let mut session = Session {
            socket,
            peer,
            console_id,
            bmc_id,
            seq: 0,
            rq_seq: random::<1>()[0] & 0x3f,
            k1,
            k2,
        };
        // Chassis control needs more than the default (user) privilege.
        session
            .request(0x06, 0x3b, &[ADMIN], "Set Session Privilege Level")
            .await?;
        Ok(session)
    }

    /// One IPMI request in the session; the response's data after its completion code.
    async fn request(
        &mut self,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        what: &str,
    ) -> Result<Vec<u8>, PowerError> {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let rq_seq = self.rq_seq;
        let mut message = vec![BMC_ADDR, netfn << 2];
        message.push(checksum(&message));
        let body_start = message.len();
        message.extend_from_slice(&[CONSOLE_ADDR, rq_seq << 2, cmd]);
        message.extend_from_slice(data);
        message.push(checksum(&message[body_start..]));

        let (k1, k2, console_id, bmc_id) = (self.k1, self.k2, self.console_id, self.bmc_id);
        let seq = &mut self.seq;
        let mut packets = || {
            *seq = seq.wrapping_add(1).max(1);
            seal(&message, bmc_id, *seq, &k1, &k2)
        };
        let mut accept = |packet: &[u8]| match parse_packet(packet, Some((console_id, &k1))) {
            Ok((PAYLOAD_IPMI, payload)) => match open_payload(&payload, &k2) {
                Ok(m) if m.len() >= 8 && m[4] >> 2 == rq_seq && m[5] == cmd => Some(Ok(m)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            },
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        let response =
            Self::exchange(&self.socket, self.peer, &mut packets, &mut accept, what).await?;
        // rqAddr, netFn, checksum, rsAddr, rqSeq, cmd, completion code, data…, checksum.
        if checksum(&response[..3]) != 0 || checksum(&response[3..]) != 0 {
            return Err(PowerError::Protocol(format!(
                "{what}: an answer with a bad checksum"
            )));
        }
        let code = response[6];
        if code != 0 {
            return Err(PowerError::Refused {
                what: what.to_string(),
                reason: completion(code),
            });
        }
        Ok(response[7..response.len() - 1].to_vec())
    }

    async fn close(mut self) {
        let id = self.bmc_id.to_le_bytes();
        // Best effort: a BMC ends an idle session by itself anyway.
        let _ = self.request(0x06, 0x3c, &id, "Close Session").await;
    }
}

/// An IPMI message, encrypted (AES-CBC-128, random IV) and authenticated (HMAC-SHA1-96).
fn seal(message: &[u8], bmc_id: u32, seq: u32, k1: &[u8; 20], k2: &[u8; 16]) -> Vec<u8> {
    let iv = random::<16>();
    // Confidentiality pad 1, 2, 3…, then its length, to a whole number of blocks.
    let pad = (16 - (message.len() + 1) % 16) % 16;
    let mut plain = message.to_vec();
    plain.extend((1..=pad as u8).collect::<Vec<_>>());
    plain.push(pad as u8);
    let len = plain.len();
    let encryptor = cbc::Encryptor::<Aes128>::new_from_slices(k2, &iv).expect("16-byte key and IV");
    let encrypted = encryptor
        .encrypt_padded::<cipher::block_padding::NoPadding>(&mut plain, len)
        .expect("whole blocks")
        .to_vec();
    let mut p = RMCP.to_vec();
    p.push(AUTH_RMCP_PLUS);
    p.push(PAYLOAD_IPMI | ENCRYPTED | AUTHENTICATED);
    p.extend_from_slice(&bmc_id.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&((16 + encrypted.len()) as u16).to_le_bytes());
    p.extend_from_slice(&iv);
    p.extend_from_slice(&encrypted);
    // Integrity pad so that auth type … next header is a multiple of 4.
    let covered = p.len() - 4 + 2;
    let integrity_pad = (4 - covered % 4) % 4;
    p.extend(std::iter::repeat_n(0xffu8, integrity_pad));
    p.push(integrity_pad as u8);
    p.push(0x07);
    let code = hmac(k1, &[&p[4..]]);
    p.extend_from_slice(&code[..12]);
    p
}

/// The IPMI message inside an encrypted payload.
fn open_payload(payload: &[u8], k2: &[u8; 16]) -> Result<Vec<u8>, String> {
    if payload.len() < 32 || !payload.len().is_multiple_of(16) {
        return Err(format!("an encrypted payload of {} bytes", payload.len()));
    }
    let (iv, data) = payload.split_at(16);
    let mut data = data.to_vec();
    let decryptor = cbc::Decryptor::<Aes128>::new_from_slices(k2, iv).expect("16-byte key and IV");
    let plain = decryptor
        .decrypt_padded::<cipher::block_padding::NoPadding>(&mut data)
        .map_err(|_| "a payload that does not decrypt".to_string())?;
    let pad = *plain.last().ok_or("an empty payload")? as usize;
    if pad >= 16 || plain.len() < pad + 1 + 8 {
        return Err("a payload with a wrong confidentiality pad".into());
    }
    Ok(plain[..plain.len() - 1 - pad].to_vec())
}

/// One power operation on an IPMI BMC, in a session of its own.
pub async fn run(
    peer: SocketAddr,
    user: &str,
    password: &str,
    action: PowerAction,
) -> Result<PowerState, PowerError> {
    let mut session = Session::open(peer, user, password).await?;
    let result = operate(&mut session, action).await;
    session.close().await;
    result
}

async fn status(session: &mut Session) -> Result<PowerState, PowerError> {
    let data = session
        .request(0x00, 0x01, &[], "Get Chassis Status")
        .await?;
    let first = data
        .first()
        .ok_or_else(|| PowerError::Protocol("Get Chassis Status: no data".into()))?;
    Ok(if first & 1 == 1 {
        PowerState::On
    } else {
        PowerState::Off
    })
}

/// Waits for the chassis to show `target`, within [`super::SETTLE`].
async fn settle(session: &mut Session, target: PowerState) -> Result<PowerState, PowerError> {
    let deadline = tokio::time::Instant::now() + super::SETTLE;
    loop {
        if status(session).await? == target {
            return Ok(target);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(super::never_settled(target));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn operate(session: &mut Session, action: PowerAction) -> Result<PowerState, PowerError> {
    let control = |code: u8| [code];
    match action {
        PowerAction::Status => status(session).await,
        PowerAction::On => {
            session
                .request(0x00, 0x02, &control(1), "Chassis Control (power up)")
                .await?;
            settle(session, PowerState::On).await
        }
        PowerAction::Off => {
            session
                .request(0x00, 0x02, &control(0), "Chassis Control (power down)")
                .await?;
            settle(session, PowerState::Off).await
        }
        PowerAction::Cycle => {
            // A power cycle of a machine that is off is refused by many BMCs: power it up.
            let code = match status(session).await? {
                PowerState::On => 2,
                PowerState::Off => 1,
            };
            session
                .request(0x00, 0x02, &control(code), "Chassis Control (power cycle)")
                .await?;
            Ok(PowerState::On)
        }
        PowerAction::PxeOnce => {
            // Boot flags (parameter 5): valid, this boot only, boot device PXE.
            session
                .request(
                    0x00,
                    0x08,
                    &[0x05, 0x80, 0x04, 0x00, 0x00, 0x00],
                    "Set System Boot Options (PXE, next boot)",
                )
                .await?;
            status(session).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_message_opens_with_the_same_keys_and_not_others() {
        let (k1, k2) = ([7u8; 20], [9u8; 16]);
        for len in [8usize, 15, 16, 30, 47] {
            let message: Vec<u8> = (0..len as u8).collect();
            let packet = seal(&message, 0x1234, 5, &k1, &k2);
            // The BMC's answers carry our id; build one the way a BMC would.
            let mut answer = packet.clone();
            answer[6..10].copy_from_slice(&0xabcdu32.to_le_bytes());
            let code_at = answer.len() - 12;
            let code = hmac(&k1, &[&answer[4..code_at]]);
            answer[code_at..].copy_from_slice(&code[..12]);
            let (kind, payload) = parse_packet(&answer, Some((0xabcd, &k1))).unwrap();
            assert_eq!(kind, PAYLOAD_IPMI);
            assert_eq!(open_payload(&payload, &k2).unwrap(), message);
            // Another session, another integrity key, a flipped byte: refused.
            assert!(parse_packet(&answer, Some((0xabce, &k1))).is_err());
            assert!(parse_packet(&answer, Some((0xabcd, &[8u8; 20]))).is_err());
            let mut flipped = answer.clone();
            flipped[20] ^= 1;
            assert!(parse_packet(&flipped, Some((0xabcd, &k1))).is_err());
            // The trailer makes auth type … next header a multiple of 4.
            assert_eq!((packet.len() - 4 - 12) % 4, 0);
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut seed = 1u64;
        for n in 0..2000usize {
            let len = n % 90;
            let packet: Vec<u8> = (0..len)
                .map(|i| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if i < 4 {
                        RMCP[i]
                    } else if i == 4 {
                        6
                    } else {
                        (seed >> 33) as u8
                    }
                })
                .collect();
            let _ = parse_packet(&packet, None);
            let _ = parse_packet(&packet, Some((1, &[0; 20])));
            let _ = open_payload(&packet, &[0; 16]);
        }
    }

    #[test]
    fn checksums_sum_to_zero() {
        let bytes = [0x20u8, 0x00 << 2];
        assert_eq!(
            bytes
                .iter()
                .fold(checksum(&bytes), |s, b| s.wrapping_add(*b)),
            0
        );
    }
}
