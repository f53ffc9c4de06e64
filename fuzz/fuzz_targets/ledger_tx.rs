//! A ledger transaction from the network: decoding and applying it must refuse
//! or succeed, never panic, and a refused one must leave the state unchanged.
#![no_main]

use controlplane::ledger::{Params, SignedTx, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tx) = SignedTx::decode(data) else { return };
    let params = Params {
        price_per_byte: 1,
        dev_deposits: true,
        operators: Default::default(),
    };
    let mut state = State::default();
    let before = state.clone();
    if state.apply(&params, &tx).is_err() {
        assert_eq!(state, before);
    }
});
