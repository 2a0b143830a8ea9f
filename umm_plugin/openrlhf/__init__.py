"""The only code that touches OpenRLHF: rollout engine, reward and advantage hooks, flags, patches. Empty until the
GvU issue lands."""
