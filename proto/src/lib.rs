//! `proto`: the versioned gRPC contract (`hsca.v1`) and the tonic/prost code generated from it.
//!
//! Not built yet: this crate is a placeholder until the CA-server issue lands.
