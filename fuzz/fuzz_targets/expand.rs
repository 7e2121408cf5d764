//! Variable expansion of shell-form words must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let src = format!("FROM scratch\nCOPY {text} dest/\n");
    if let Ok(kf) = kiln::kubefile::Kubefile::parse("K", &src) {
        for ins in kf.instructions() {
            if let kiln::kubefile::InstructionKind::Copy(c) = &ins.kind {
                for w in c.sources.iter().chain(std::iter::once(&c.dest)) {
                    let _ = w.expand(&|k| (k.len() % 2 == 0).then(|| k.repeat(2)));
                }
            }
        }
    }
});
