//! The config loader: TOML text plus environment overrides
//! (`Config::from_toml(text, origin, env)`). Whatever the file and the
//! environment say, loading answers a config or an error, never a panic; a
//! config it answers passes its own validation again, and its error messages
//! render.
//!
//! Input: the TOML text, then optionally a NUL byte and `NAME=value` lines of
//! environment (the seeds are the shipped `config/*.toml` files as they are).

#![no_main]

use letta_proxy::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    // The loader reads the files a config names (admin.token_file, TLS
    // certificates and keys). A device file would make it read forever or
    // block on a terminal; that is the operator's own doing, not a defect.
    if [&b"/dev"[..], b"/proc", b"/sys"]
        .iter()
        .any(|d| data.windows(d.len()).any(|w| w == *d))
    {
        return;
    }
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::from_toml(text, "fuzz.toml", env) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                panic!("a loaded config fails its own validation: {e}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
