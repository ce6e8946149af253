"""A local Kubernetes control plane (etcd + kube-apiserver) for tests, demos and manual use."""
