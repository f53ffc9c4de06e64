//! Delivery receipts: `tessera get` signs one with the client's own key after the
//! bytes verified, and hands it to the node, which keeps it durably (fsynced
//! before it answers 202). Bad batches are refused and change nothing.

mod common;

use common::*;
use controlplane::ledger::{Receipt, ReceiptLog};

#[test]
fn a_verified_download_leaves_a_signed_durable_receipt() {
    let mut node = Node::start(&[]);
    let data = random_bytes(123_456, 61);
    let hash = node.put_bytes(&data);
    let tmp = tempfile::tempdir().expect("tmp");
    let client_dir = tmp.path().join("client");
    let out = tmp.path().join("out");
    get_as(&node, &client_dir, &hash, &out);
    assert_eq!(std::fs::read(&out).expect("read"), data);
    // The client's key was made on first use, private to its owner.
    let client = controlplane::NodeKey::load(&client_dir).expect("client key");
    let node_id = controlplane::NodeKey::load(&node.data_dir)
        .expect("node key")
        .id();
    // Killed right after answering: the receipt is on disk already.
    node.kill9();
    let log = node.data_dir.join("receipts.log");
    let receipts = ReceiptLog::read(&log).expect("log");
    assert_eq!(receipts.len(), 1);
    let r = &receipts[0];
    assert!(r.verify(), "receipt not signed by its client");
    assert_eq!(r.receipt.client, client.id().0);
    assert_eq!(r.receipt.node, node_id.0);
    assert_eq!(r.receipt.bytes, data.len() as u64);
    assert_eq!(hex(&r.receipt.content), hash);
    assert_eq!(r.receipt.seq, 0);
    // The next download is the next sequence number.
    node.restart();
    get_as(&node, &client_dir, &hash, &out);
    let receipts = ReceiptLog::read(&log).expect("log");
    assert_eq!(receipts.len(), 2);
    assert_eq!(receipts[1].receipt.seq, 1);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn bad_receipt_batches_are_refused_and_change_nothing() {
    let node = Node::start(&[]);
    let node_id = controlplane::NodeKey::load(&node.data_dir)
        .expect("node key")
        .id();
    let log = node.data_dir.join("receipts.log");
    let post = |body: &[u8]| {
        let mut req = format!(
            "POST /receipts HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        node.request(&req).0
    };
    let client = controlplane::NodeKey::ephemeral();
    let receipt = |node: [u8; 32]| Receipt {
        client: client.id().0,
        node,
        service: 1,
        content: [3; 32],
        bytes: 10,
        epoch: 0,
        seq: 0,
    };
    let batch = |r: Vec<controlplane::ledger::SignedReceipt>| postcard::to_stdvec(&r).expect("enc");
    assert_eq!(post(b"not postcard at all"), 400);
    // Altered after signing.
    let mut forged = receipt(node_id.0).sign_with(&client);
    forged.receipt.bytes = 1_000_000;
    assert_eq!(post(&batch(vec![forged])), 400);
    // Signed, but for another node.
    assert_eq!(post(&batch(vec![receipt([9; 32]).sign_with(&client)])), 400);
    // Too large a batch.
    assert_eq!(post(&vec![0u8; 9000]), 413);
    assert!(ReceiptLog::read(&log).expect("log").is_empty());
    // A good one is kept.
    assert_eq!(
        post(&batch(vec![receipt(node_id.0).sign_with(&client)])),
        202
    );
    assert_eq!(ReceiptLog::read(&log).expect("log").len(), 1);
}
