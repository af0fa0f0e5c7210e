//! ingress (being written)
