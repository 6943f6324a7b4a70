//! Network-namespace lab: namespaces, veth pairs, servers, clients and floods, removed on drop.
