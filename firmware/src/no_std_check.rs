//! The crate stays `no_std` without an allocator: a check that runs with
//! the normal tests even where the bare-metal target (CI's stronger check,
//! a build for `riscv32imc-unknown-none-elf`) cannot be installed.

use std::prelude::rust_2024::*;

#[test]
fn library_sources_use_neither_std_nor_alloc() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let lib = std::fs::read_to_string(format!("{root}/lib.rs")).unwrap();
    assert!(lib.contains("\n#![no_std]\n"), "lib.rs lost #![no_std]");
    let mut checked = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Test modules (tests.rs, */tests.rs, this file) run on the host.
        if path.is_dir() || !name.ends_with(".rs") || name == "no_std_check.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let allowed = name == "lib.rs" && code.trim() == "extern crate std;";
            for word in ["std::", "alloc::", "extern crate", "Vec<", "Box<", "String"] {
                assert!(
                    allowed || !code.contains(word),
                    "{name}:{}: `{word}` in a no_std library file: {line}",
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} files checked");
}
