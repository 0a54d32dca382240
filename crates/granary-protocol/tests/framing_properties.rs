//! Property tests of the framing: whatever requests cmd/go writes, and
//! however its pipe splits them, the reader returns them unchanged; and no
//! input at all makes the reader panic or run away.

use std::io::BufReader;

use granary_id::Id;
use granary_protocol::{
    BodyError, Incoming, Request, RequestReader, write_request, write_request_header,
};
use proptest::prelude::*;

fn hash() -> impl Strategy<Value = Id> {
    prop::array::uniform32(any::<u8>()).prop_map(Id)
}

/// A request with the body that goes with it.
fn request() -> impl Strategy<Value = (Request, Vec<u8>)> {
    let id = 1..i64::MAX;
    prop_oneof![
        (id.clone(), hash()).prop_map(|(id, action_id)| (Request::Get { id, action_id }, vec![])),
        (
            id.clone(),
            hash(),
            hash(),
            prop::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(id, action_id, output_id, body)| {
                let body_size = body.len() as u64;
                (
                    Request::Put {
                        id,
                        action_id,
                        output_id,
                        body_size,
                    },
                    body,
                )
            }),
        id.prop_map(|id| (Request::Close { id }, vec![])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn requests_round_trip(requests in prop::collection::vec(request(), 0..12), capacity in 1usize..300) {
        let mut stream = Vec::new();
        for (request, body) in &requests {
            write_request(&mut stream, request, body).unwrap();
        }
        let mut reader = RequestReader::new(BufReader::with_capacity(capacity, stream.as_slice()));
        for (expected, body) in &requests {
            match reader.next_request().unwrap() {
                Incoming::Request(got) => prop_assert_eq!(&got, expected),
                other => prop_assert!(false, "expected {:?}, got {:?}", expected, other),
            }
            let mut got_body = Vec::new();
            prop_assert_eq!(reader.read_body(&mut got_body).unwrap(), body.len() as u64);
            prop_assert_eq!(&got_body, body);
        }
        prop_assert!(matches!(reader.next_request().unwrap(), Incoming::End), "nothing is left");
    }

    #[test]
    fn arbitrary_input_never_panics(input in prop::collection::vec(any::<u8>(), 0..2000), capacity in 1usize..64) {
        let mut reader = RequestReader::new(BufReader::with_capacity(capacity, input.as_slice()));
        let mut rounds = 0;
        loop {
            rounds += 1;
            prop_assert!(rounds <= input.len() + 1, "the reader does not advance");
            match reader.next_request() {
                Ok(Incoming::Request(Request::Put { body_size, .. })) => {
                    let mut body = Vec::new();
                    match reader.read_body(&mut body) {
                        Ok(n) => prop_assert_eq!(n, body_size),
                        Err(BodyError::Framing(_)) => break,
                        Err(_) => prop_assert!(body.len() as u64 <= body_size),
                    }
                }
                Ok(Incoming::End) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Corrupting one byte of a valid put's body line is caught: the put is
    /// rejected or its body differs, and the next request is still read.
    #[test]
    fn a_corrupted_body_never_passes_for_the_original(
        body in prop::collection::vec(any::<u8>(), 1..500),
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let put = Request::Put { id: 1, action_id: Id([1; 32]), output_id: Id([2; 32]), body_size: body.len() as u64 };
        let mut stream = Vec::new();
        write_request(&mut stream, &put, &body).unwrap();
        let mut header = Vec::new();
        write_request_header(&mut header, &put).unwrap();
        let body_line_start = header.len() + 1;
        let body_line_end = stream.len() - 2;
        let at = body_line_start + position.index(body_line_end - body_line_start);
        prop_assume!(stream[at] != replacement && replacement != b'\n');
        stream[at] = replacement;
        write_request(&mut stream, &Request::Close { id: 2 }, &[]).unwrap();

        let mut reader = RequestReader::new(stream.as_slice());
        prop_assert!(matches!(reader.next_request().unwrap(), Incoming::Request(Request::Put { .. })), "the put header is intact");
        let mut got = Vec::new();
        match reader.read_body(&mut got) {
            Ok(_) => prop_assert_ne!(got, body),
            Err(BodyError::Invalid(_)) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
        prop_assert!(matches!(reader.next_request().unwrap(), Incoming::Request(Request::Close { id: 2 })), "the stream stays in step");
    }
}
