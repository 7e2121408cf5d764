//! The Kubefile parser must never panic, and every error must point inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match kiln::kubefile::Kubefile::parse("Kubefile", text) {
        Ok(kf) => {
            for ins in kf.instructions() {
                assert!(ins.span.start <= ins.span.end && ins.span.end <= text.len());
                assert!(text.is_char_boundary(ins.span.start));
            }
            let _ = kf.check_apps(&["inherited".to_owned()]);
        }
        Err(e) => {
            let loc = e.location();
            assert!(loc.line >= 1 && loc.column >= 1);
            assert!(loc.line <= text.lines().count().max(1) + 1);
            let _ = e.to_string();
        }
    }
});
