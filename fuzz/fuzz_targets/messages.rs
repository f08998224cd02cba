//! Every topic's message decoded from arbitrary bytes, and the headers Lookout reads
//! (`content-type`, `traceparent`) parsed from arbitrary text: an error, never a panic; what
//! decodes encodes again to bytes that decode to a message of the same encoded size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_bus::{TraceContext, headers::parse_content_type, topics};

fn round_trip<M: lookout_proto::BusMessage>(topic: &lookout_proto::Topic<M>, bytes: &[u8]) {
    if let Ok(message) = topic.decode(bytes) {
        let encoded = topic.encode(&message);
        let again = topic.decode(&encoded).expect("what was encoded decodes");
        // Compared by size: a NaN score is not equal to itself, and map entries (log fields)
        // are encoded in no fixed order.
        assert_eq!(topic.encode(&again).len(), encoded.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 5 {
        0 => round_trip(&topics::FRAMES, bytes),
        1 => round_trip(&topics::PREDICTIONS, bytes),
        2 => round_trip(&topics::CHANGES, bytes),
        3 => round_trip(&topics::LOGS, bytes),
        _ => {
            let text = String::from_utf8_lossy(bytes);
            let _ = parse_content_type(&text);
            if let Some(trace) = TraceContext::parse(&text) {
                let again = TraceContext::parse(&trace.to_header()).expect("its own header parses");
                assert_eq!(again.to_header(), trace.to_header());
            }
        }
    }
});
