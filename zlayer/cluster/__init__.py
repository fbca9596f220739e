"""The cluster: nodes that join with signed tokens, share state through the etcd each runs as a child (watching
each other's liveness through etcd leases, electing their leader through etcd's raft), and the leader's placement of
replicas on them (docs/architecture.md, "Cluster")."""
