//! The DHCP decision path under malformed input, without sockets: valid requests of every kind,
//! then damaged, cut, grown and random versions, through decode, decide and encode, in full and
//! proxy mode. Nothing may panic; every reply must decode and answer the request's xid.
//! (The same entry point backs the cargo-fuzz target `dhcp_decide` in `fuzz/`.)

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use lacave::dhcp::fuzz::decide_bytes;
use lacave_integration_tests::Rng;

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let kinds = [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Release,
        MessageType::Decline,
        MessageType::Inform,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        for (j, last) in [1u8, 2, 3].into_iter().enumerate() {
            let z = std::net::Ipv4Addr::UNSPECIFIED;
            let mut m = Message::new(z, z, z, z, &[0x52, 0x54, 0, 0, 0, last]);
            m.set_xid((i * 10 + j) as u32);
            m.opts_mut().insert(DhcpOption::MessageType(kind));
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
                    [0u16, 7, 16][j],
                )));
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                [
                    b"PXEClient".to_vec(),
                    b"HTTPClient".to_vec(),
                    b"MSFT 5.0".to_vec(),
                ][j]
                    .clone(),
            ));
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress("10.0.0.21".parse().unwrap()));
            let mut bytes = Vec::new();
            m.encode(&mut Encoder::new(&mut bytes)).unwrap();
            out.push(bytes);
        }
    }
    out
}

#[test]
fn malformed_requests_never_panic_and_replies_are_well_formed() {
    let seeds = seeds();
    let mut rng = Rng(0xd1c9_5eed_0bad_cafe);
    let mut replies = 0;
    for round in 0..20_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let mut b = seed.clone();
        match rng.below(5) {
            0 => rng.scramble(&mut b),
            1 => b.truncate(rng.below(b.len())),
            2 => {
                // Header fields parsers trust: op, htype, hlen, and the option area.
                let i = [0usize, 1, 2, 3, 236, 237, 238, 239, 240, 241, 242][rng.below(11)];
                if i < b.len() {
                    b[i] = rng.next_u64() as u8;
                }
            }
            3 => b = (0..rng.below(600)).map(|_| rng.next_u64() as u8).collect(),
            _ => {}
        }
        for proxy in [false, true] {
            if let Some(reply) = decide_bytes(&b, proxy) {
                replies += 1;
                let m = Message::decode(&mut Decoder::new(&reply)).expect("a reply decodes");
                assert_eq!(
                    &reply[4..8],
                    &b[4..8],
                    "the reply answers the request's xid (round {round})"
                );
                assert!(m.opts().msg_type().is_some());
            }
        }
    }
    assert!(replies > 1_000, "enough inputs reached a reply ({replies})");
}
