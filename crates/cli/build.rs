//! Test gates only (see `test_gates`).

fn main() {
    test_gates();
}

include!("../server/test_gates.rs");
