//! Compiles `proto/lookout/v1/*.proto` with protox (no system `protoc`) and prost-build,
//! and derives `prost_reflect::ReflectMessage` so tools can render any message as JSON.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files =
        ["frame.proto", "prediction.proto", "log.proto"].map(|f| root.join("lookout/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("file_descriptor_set.bin"), fds.encode_to_vec())?;

    let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(fds.clone())?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]).enable_type_names();
    for message in pool.all_messages() {
        let name = message.full_name();
        if !name.starts_with("lookout.") {
            continue;
        }
        config
            .type_attribute(name, "#[derive(::prost_reflect::ReflectMessage)]")
            .type_attribute(name, format!(r#"#[prost_reflect(message_name = "{name}")]"#))
            .type_attribute(
                name,
                r#"#[prost_reflect(descriptor_pool = "crate::DESCRIPTOR_POOL")]"#,
            );
    }
    config.compile_fds(fds)?;
    Ok(())
}
