//! Model manifests (`model.toml`) from arbitrary text: a `ModelError` naming the file, or a
//! manifest whose checks held; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_predictor::model::Model;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("lookout-fuzz-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("model.toml");
    std::fs::write(&path, data).expect("the manifest is written");
    match Model::read_manifest(&path) {
        Ok((manifest, read)) => {
            assert_eq!(read, path);
            assert!(!manifest.preprocess.std.contains(&0.0));
        }
        Err(e) => assert!(e.to_string().contains("model.toml"), "the error names the file: {e}"),
    }
});
