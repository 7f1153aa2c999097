"""``make bench``: v2server against MLServer and the KServe Python server, side by side, on one machine."""
