//! Log records from the logs topic, decoded from arbitrary bytes and rendered each way the log
//! shipper writes them: the JSON line and the ECS document are one line of valid JSON with the
//! record's message, and the human line is one line without control characters (a message
//! cannot forge a second record or send escape sequences to a terminal); never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_bus::topics;
use lookout_logship::record::{Entry, Origin, ecs_document, human_line, json_line};

fuzz_target!(|data: &[u8]| {
    let Some((&timestamp, bytes)) = data.split_first() else { return };
    let Ok(record) = topics::LOGS.decode(bytes) else { return };
    let origin = Origin {
        topic: "lookout.logs".into(),
        partition: 0,
        offset: 7,
        // Now and then no Kafka timestamp, or one out of any calendar's range.
        timestamp_ms: match timestamp % 3 {
            0 => None,
            1 => Some(1_777_636_800_000),
            _ => Some(i64::MAX),
        },
    };
    let entry = Entry { record, origin };
    for rendered in [json_line(&entry), ecs_document(&entry)] {
        assert!(!rendered.contains('\n'), "one line: {rendered}");
        let value: serde_json::Value = serde_json::from_str(&rendered).expect("valid JSON");
        assert_eq!(value["message"].as_str(), Some(entry.record.message.as_str()));
    }
    let human = human_line(&entry);
    assert!(!human.chars().any(char::is_control), "no control characters: {human:?}");
});
