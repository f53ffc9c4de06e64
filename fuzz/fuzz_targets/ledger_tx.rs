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
        epoch_ms: 1000,
        committee_size: 4,
        min_stake: 1,
    };
    let mut state = State::genesis(vec![[7; 32]]);
    state.advance(&params, 1);
    let before = state.clone();
    if state.apply(&params, &tx).is_err() {
        assert_eq!(state, before);
    }
    // An epoch's end after any transaction must not panic either.
    state.advance(&params, 5000);
});
