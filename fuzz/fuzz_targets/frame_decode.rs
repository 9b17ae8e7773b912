//! The cvpn/1 frame decoder on any bytes a peer sends: it never panics, a
//! frame it decodes spans exactly its header and payload, and a packet
//! frame re-encodes to the same bytes.
#![no_main]

use cvpn_proto::{Frame, HEADER_LEN, decode, encode_packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    while let Ok(Some((frame, n))) = decode(&data[pos..]) {
        let bytes = &data[pos..pos + n];
        match frame {
            Frame::Packet(p) => {
                assert_eq!(p.len() + HEADER_LEN, n);
                let mut again = Vec::new();
                encode_packet(&mut again, p).expect("a decoded packet re-encodes");
                assert_eq!(again, bytes);
            }
            Frame::Control(c) => {
                assert_eq!(c.len() + HEADER_LEN, n);
                assert_eq!(&bytes[HEADER_LEN..], c);
                let _ = cvpn_proto::Control::parse(c);
            }
        }
        pos += n;
    }
});
