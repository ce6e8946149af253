"""What Steward's parts agree on without importing one another: the metric families one part exports and another
part, the alert rules or the dashboard read (`metrics`), and the environment variables the operator sets in the pods
it runs (`environment`). Every part may import this package; it imports only the standard library."""
