//! Rendering Lookout messages as JSON (protobuf's JSON mapping, by type name).

use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value;

/// How `bytes` fields are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BytesMode {
    /// Their length, e.g. `"<51234 bytes>"` (JPEG frames are large).
    Len,
    /// Base64, as protobuf's JSON mapping does.
    Base64,
}

/// Decodes `payload` as the named message type and renders it as JSON.
pub(crate) fn render(type_name: &str, payload: &[u8], bytes: BytesMode) -> Result<Value, String> {
    let desc = lookout_proto::DESCRIPTOR_POOL
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("unknown message type {type_name}"))?;
    let msg = DynamicMessage::decode(desc.clone(), payload).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut value = msg
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())?;
    if bytes == BytesMode::Len {
        summarise_bytes(&desc, &mut value);
    }
    Ok(value)
}

/// Replaces base64 `bytes` fields by their decoded length, recursively.
fn summarise_bytes(desc: &MessageDescriptor, value: &mut Value) {
    let Value::Object(map) = value else { return };
    for field in desc.fields() {
        let Some(v) = map.get_mut(field.json_name()) else { continue };
        match field.kind() {
            Kind::Bytes => {
                if let Value::String(b64) = v {
                    *v = Value::String(format!("<{} bytes>", b64.len() / 4 * 3 - padding(b64)));
                }
            }
            Kind::Message(inner) => match v {
                Value::Array(items) => items.iter_mut().for_each(|i| summarise_bytes(&inner, i)),
                other => summarise_bytes(&inner, other),
            },
            _ => {}
        }
    }
}

fn padding(b64: &str) -> usize {
    b64.bytes().rev().take_while(|b| *b == b'=').count()
}

#[cfg(test)]
mod tests {
    use lookout_proto::v1::Frame;
    use prost::Message as _;

    use super::*;

    #[test]
    fn frames_render_with_their_image_summarised() {
        let f = Frame {
            camera_id: "lobby".into(),
            sequence: 9,
            data: vec![7u8; 1000].into(),
            ..Default::default()
        };
        let v = render("lookout.v1.Frame", &f.encode_to_vec(), BytesMode::Len).unwrap();
        assert_eq!(v["cameraId"], "lobby");
        assert_eq!(v["sequence"], "9", "64-bit integers are strings in protobuf JSON");
        assert_eq!(v["data"], "<1000 bytes>");
        let v = render("lookout.v1.Frame", &f.encode_to_vec(), BytesMode::Base64).unwrap();
        assert!(v["data"].as_str().unwrap().len() > 1000);
        assert!(render("lookout.v1.Frame", b"\xff\xff", BytesMode::Len).is_err());
    }
}
