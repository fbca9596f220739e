"""The cluster: nodes that join, share state through etcd, and the leader's placement of replicas on them."""
