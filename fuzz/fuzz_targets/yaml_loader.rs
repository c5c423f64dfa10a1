//! The standalone YAML loader with any text: a configuration or an error, never a panic.
#![no_main]

use std::path::Path;

use hookline::standalone::loader::{Config, load_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = Config::default();
    let _ = load_text(text, Path::new("fuzz.yaml"), &mut config);
});
