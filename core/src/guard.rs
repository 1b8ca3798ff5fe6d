//! Panic containment at network boundaries.
//!
//! Our own decoders return `Result` on hostile input; a dependency that processes peer bytes
//! (renet) could still panic on a bug we have not found. Each call site that feeds it network
//! input wraps the call in [`catch_panic`], then throws the dependency's state away (a value
//! that panicked mid-update may break its own invariants) and drops only that peer.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run `f`; a panic inside it comes back as `Err(message)` instead of unwinding further.
/// The caller must discard whatever state `f` was mutating when it panicked.
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message_and_values_pass_through() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let v: Vec<u8> = vec![1, 2];
        let i = 5;
        let err = catch_panic(|| v[i]).unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
        assert_eq!(
            catch_panic(|| -> () { std::panic::panic_any(3u32) }),
            Err("panic with a non-string payload".into())
        );
    }
}
