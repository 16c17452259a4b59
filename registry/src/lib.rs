//! `registry`: the CA's durable state — terminals, certificates, public keys, principals,
//! activations, revocations and the SM3-chained audit log — in an embedded redb database.
//!
//! Not built yet: this crate is a placeholder until the CA-server issue lands.
